"""Where tool-call and answer spans open and close in generated ids, read from their decoded text.

A real tokenizer splits a delimiter into several ids, and merges its first characters with the text before it
(SmolLM2 encodes `Dina.<search>` as `Dina` `.<` `search` `>`), so no fixed id sequence marks a delimiter. The
rule of METHODS.md §1 (DART Eq. 2, arXiv 2602.00994) is read on text instead: token t is ACTION iff the text of
c_<t (this turn's ids before t) holds an opened tool call that is not yet closed; the token that completes the
opening delimiter is still REASONING (the decision to act), the call's content and the token that completes
its closing delimiter are ACTION. ANSWER spans follow the same rule with the answer tags. A turn stops once its
text holds the whole closing delimiter, whatever ids carry it: the stop an id rule would miss when the tag is
split (it stopped on `>`, the last id of `</search>` and of `<search>` alike) or merged into one id with the
text after it. With single-id delimiters this is exactly the id rule.

Pieces are decoded one id at a time (cached), which equals the text of the whole sequence wherever a
delimiter can be: byte-level BPE decodes ASCII bytes independently, and the delimiters are ASCII.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from arlkit.trajectory import Role


@dataclass(frozen=True)
class SpanTags:
    """The delimiter strings of one tool-call format."""

    call_open: str
    call_close: str
    answer_open: str = "<answer>"
    answer_close: str = "</answer>"


class SpanScanner:
    """Decodes ids to text pieces (cached per id) for one tokenizer and one set of delimiters."""

    def __init__(self, tokenizer: Any, tags: SpanTags):
        self.tokenizer, self.tags = tokenizer, tags
        self._pieces: dict[int, str] = {}

    def piece(self, token_id: int) -> str:
        text = self._pieces.get(token_id)
        if text is None:
            text = self.tokenizer.decode(
                [token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False
            )
            self._pieces[token_id] = text
        return text

    def turn(self, ids: Sequence[int] = ()) -> TurnText:
        """A TurnText that has read `ids` (the turn's ids so far)."""
        t = TurnText(self)
        for i in ids:
            t.push(i)
        return t

    def roles(self, ids: Sequence[int]) -> list[Role]:
        """The role of each of one turn's generated ids."""
        t = TurnText(self)
        out = []
        for i in ids:
            out.append(t.role)
            t.push(i)
        return out


_SCANNERS: weakref.WeakKeyDictionary[Any, dict[SpanTags, SpanScanner]] = weakref.WeakKeyDictionary()


def scanner_for(tokenizer: Any, tags: SpanTags) -> SpanScanner:
    """The scanner of this tokenizer and these tags, shared by every episode so pieces are decoded once."""
    per_tok = _SCANNERS.setdefault(tokenizer, {})
    if tags not in per_tok:
        per_tok[tags] = SpanScanner(tokenizer, tags)
    return per_tok[tags]


class TurnText:
    """One turn's decoded text as ids arrive: the role of the next id and whether a tool call was closed."""

    def __init__(self, scanner: SpanScanner):
        self.scanner = scanner
        self.text = ""
        self.role = Role.REASONING  # the role of the next id
        self.closed_call = False  # the text holds the closing call delimiter: the turn should stop
        self._scan = 0  # text before this index has been read for delimiters

    def push(self, token_id: int) -> None:
        tags = self.scanner.tags
        start = len(self.text)
        self.text += self.scanner.piece(token_id)
        if (
            not self.closed_call
            and self.text.find(tags.call_close, max(0, start - len(tags.call_close))) >= 0
        ):
            self.closed_call = True
        while True:  # one id may complete several delimiters (`></search>` after an empty call, say)
            if self.role == Role.REASONING:
                found = _first(
                    self.text, self._scan, (tags.call_open, Role.ACTION), (tags.answer_open, Role.ANSWER)
                )
            else:
                close = tags.call_close if self.role == Role.ACTION else tags.answer_close
                found = _first(self.text, self._scan, (close, Role.REASONING))
            if found is None:
                return
            self._scan, self.role = found


def _first(text: str, pos: int, *tags: tuple[str, Role]) -> tuple[int, Role] | None:
    """(end, role) of the tag that ends first in text[pos:], or None."""
    best = None
    for tag, role in tags:
        i = text.find(tag, pos)
        if i >= 0 and (best is None or i + len(tag) < best[0]):
            best = (i + len(tag), role)
    return best
