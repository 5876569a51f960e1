"""Per-token text for viewers: each token's share of the decoded text, so the pieces join to the whole."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["token_pieces"]

_REPLACEMENT = "\ufffd"
_MAX_PENDING = 4  # a UTF-8 character spans at most 4 byte tokens


def _decode(tokenizer: Any, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def token_pieces(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """The text each token adds, one string per id; ``"".join`` of them is the decoded text.

    Decoding ids one by one is wrong twice over: a byte-level BPE splits a multi-byte character over
    several tokens (each alone decodes to U+FFFD), and SentencePiece drops a word's leading space when
    the word is decoded first. So each piece is decoded after one token of left context and the context's
    own text is cut off; tokens ending inside a character get "" and the character goes to the token
    that completes it.
    """
    pieces: list[str] = []
    start = 0  # first token whose text is still pending
    for i in range(len(ids)):
        context = list(ids[start - 1 : start]) if start > 0 else []
        head = _decode(tokenizer, context)
        full = _decode(tokenizer, [*context, *ids[start : i + 1]])
        text = full[len(head) :] if full.startswith(head) else _decode(tokenizer, ids[start : i + 1])
        last = i + 1 == len(ids)
        if text.endswith(_REPLACEMENT) and not last and i + 1 - start < _MAX_PENDING:
            pieces.append("")  # inside a character: its text comes with the token that completes it
            continue
        pieces.append(text)
        start = i + 1
    return pieces
