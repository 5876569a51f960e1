"""Parse a model's action text into tool calls and a final answer.

Two formats: ``hermes`` (``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, as Qwen's
chat template uses) and ``tags`` (``<search>query</search>``, Search-R1/DART style). Both use
``<answer>...</answer>`` for the final answer. Parsing never raises on model output: malformed
calls become messages in :attr:`ParsedAction.errors`.

Rules (issue 19; tests/test_parsing_rules.py): text inside ``<think>...</think>`` (or after an unclosed
``<think>``) is reasoning: its calls do not run and its answers do not count. An answer counts only outside
every call block, so an ``<answer>`` inside a call's argument, or crossing a call's tags, is not one. An
unclosed ``<answer>`` is no answer, and calls after it run. A call the model did not close does not run (an
error observation says so); an open tag inside an unclosed block starts a new block. In hermes a call's
JSON object is read as JSON, so tags inside its strings are argument text: a call written inside another
call's argument does not run. In tags, a tool's open tag inside another block of the same tool leaves the
outer one unclosed (an error).
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from arlkit.errors import ArlkitError

__all__ = [
    "FORMATS",
    "ActionFormat",
    "HermesFormat",
    "ParsedAction",
    "TagsFormat",
    "ToolCall",
    "extract_answer",
    "get_format",
    "without_thinking",
]

ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_TAG_NAME = re.compile(r"^[A-Za-z_][\w-]*$")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict


@dataclass(frozen=True)
class ParsedAction:
    calls: tuple[ToolCall, ...]
    errors: tuple[str, ...]  # one message per malformed call
    answer: str | None  # stripped text of the last <answer>...</answer>

    @property
    def tool_syntax_ok(self) -> bool:
        return not self.errors


@runtime_checkable
class ActionFormat(Protocol):
    name: str
    call_open: str
    call_close: str

    def parse(self, text: str) -> ParsedAction: ...

    def instructions(self) -> str: ...


def extract_answer(text: str) -> str | None:
    """Stripped content of the last complete ``<answer>...</answer>``, or None.

    A forward scan, the same matches as ``re.findall(r"<answer>(.*?)</answer>", re.DOTALL)`` in linear
    time: the regex retried every ``<answer>`` to the end of the text, quadratic on thousands of them.
    """
    found, pos = None, 0
    while (o := text.find(ANSWER_OPEN, pos)) != -1:
        c = text.find(ANSWER_CLOSE, o + len(ANSWER_OPEN))
        if c == -1:  # no later <answer> can close either
            break
        found, pos = text[o + len(ANSWER_OPEN) : c], c + len(ANSWER_CLOSE)
    return found.strip() if found is not None else None


def without_thinking(text: str) -> str:
    """``text`` with every ``<think>...</think>`` block removed, and everything after an unclosed one."""
    parts, pos = [], 0
    while (o := text.find(THINK_OPEN, pos)) != -1:
        parts.append(text[pos:o])
        c = text.find(THINK_CLOSE, o + len(THINK_OPEN))
        if c == -1:
            return "".join(parts)
        pos = c + len(THINK_CLOSE)
    return "".join(parts) + text[pos:]


def _answer_outside(text: str, blocks: Sequence[tuple[int, int]]) -> str | None:
    """The last answer standing wholly between the well-formed call blocks (start, end) of ``text``: one
    that holds or crosses a call is none."""
    answer, pos = None, 0
    for start, end in [*sorted(blocks), (len(text), len(text))]:
        if (found := extract_answer(text[pos:start])) is not None:
            answer = found
        pos = max(pos, end)
    return answer


def _positions(text: str, tag: str) -> list[int]:
    """Sorted start offsets of every occurrence of ``tag`` (tags cannot overlap themselves: '<…>')."""
    return [m.start() for m in re.finditer(re.escape(tag), text)]


def _next(positions: list[int], pos: int) -> int:
    """The first offset >= pos, or -1."""
    i = bisect.bisect_left(positions, pos)
    return positions[i] if i < len(positions) else -1


def _scan_blocks(
    text: str, open_tag: str, close_tag: str, offset: int = 0
) -> list[tuple[int, str | None, str | None]]:
    """(position + offset, body, error) of each ``open_tag ... close_tag`` block in order.

    Unclosed opens (including an open followed by another open) and stray closes become errors
    with body None, so one malformed block does not swallow the well-formed ones after it. Tag offsets
    are found once and looked up by bisection: ``str.find`` in the loop was quadratic in the number of
    tags (thousands of unclosed opens took seconds).
    """
    opens, closes = _positions(text, open_tag), _positions(text, close_tag)
    blocks: list[tuple[int, str | None, str | None]] = []
    pos = 0
    while True:
        o, c = _next(opens, pos), _next(closes, pos)
        if o == -1 and c == -1:
            return blocks
        if o == -1 or (c != -1 and c < o):
            blocks.append((c + offset, None, f"found {close_tag} without a matching {open_tag}"))
            pos = c + len(close_tag)
            continue
        start = o + len(open_tag)
        c, nxt = _next(closes, start), _next(opens, start)
        if c == -1 or (nxt != -1 and nxt < c):
            blocks.append((o + offset, None, f"unclosed {open_tag} (missing {close_tag})"))
            if nxt == -1:
                return blocks
            pos = nxt
            continue
        blocks.append((o + offset, text[start:c], None))
        pos = c + len(close_tag)


def _json_block_end(text: str, start: int, close_tag: str) -> int | None:
    """Where ``close_tag`` starts when a JSON object begins at ``start`` (after blanks) and the tag follows
    it, else None. Tags inside the object's strings are then argument text, not calls or answers."""
    j = start + len(text[start : start + 64]) - len(text[start : start + 64].lstrip())
    if not text.startswith("{", j):
        return None
    try:
        _, end = _DECODER.raw_decode(text, j)
    except (ValueError, RecursionError):
        return None
    k = end + len(text[end : end + 64]) - len(text[end : end + 64].lstrip())
    return k if text.startswith(close_tag, k) else None


def _hermes_blocks(text: str, open_tag: str, close_tag: str) -> list[tuple[int, str | None, str | None]]:
    """As :func:`_scan_blocks`, but a block whose body is one JSON object ends at the close tag after that
    object, so tags inside its strings (a call or an answer in an argument) stay argument text."""
    blocks: list[tuple[int, str | None, str | None]] = []
    pos = 0
    while (o := text.find(open_tag, pos)) != -1:
        blocks += _scan_blocks(text[pos:o], open_tag, close_tag, offset=pos)  # stray closes before it
        end = _json_block_end(text, o + len(open_tag), close_tag)
        if end is None:  # not a JSON object closed by the tag: the plain scan decides from here
            return blocks + _scan_blocks(text[o:], open_tag, close_tag, offset=o)
        blocks.append((o, text[o + len(open_tag) : end], None))
        pos = end + len(close_tag)
    return blocks + _scan_blocks(text[pos:], open_tag, close_tag, offset=pos)


def _json_kind(value: object) -> str:
    names = {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


_NOT_JSON = object()
_DECODER = json.JSONDecoder()


def _load_json(text: str) -> tuple[object, str | None]:
    """(value, None), or (_NOT_JSON, why) for text that is not JSON a tool call can carry.

    ``json.loads`` raises more than JSONDecodeError on model output: ValueError for an integer of more
    than ``sys.get_int_max_str_digits()`` digits (4,300 by default) and RecursionError for deep nesting.
    Lone UTF-16 surrogate escapes (``"\\ud800"``) decode to strings that cannot be encoded as UTF-8, so
    an observation echoing them would break tokenisation downstream: they are rejected too.
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return _NOT_JSON, f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    except RecursionError:
        return _NOT_JSON, "nested too deeply"
    except ValueError:
        return _NOT_JSON, "a number has too many digits"
    if _SURROGATE_ESCAPE.search(text):  # paired escapes are fine (emoji); only lone ones break UTF-8
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return _NOT_JSON, "a string holds an unpaired surrogate escape such as \\ud800"
        except RecursionError:  # the encoder's stack can be a little shallower than the decoder's
            return _NOT_JSON, "nested too deeply"
    return value, None


def _parse_hermes_body(body: str) -> ToolCall | str:
    """A ToolCall, or an error message (without position) for a malformed body."""
    obj, why = _load_json(body)
    if why is not None:
        return f"invalid JSON ({why})"
    if not isinstance(obj, dict):
        return f'expected a JSON object with "name" and "arguments", got {_json_kind(obj)}'
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return 'missing "name" (the tool name as a string)'
    args = obj.get("arguments", {})
    if isinstance(args, str):  # some models emit the arguments as a JSON-encoded string
        args, why = _load_json(args) if args.strip() else ({}, None)
        if why is not None:
            return '"arguments" is a string that is not a JSON object'
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return f'"arguments" must be a JSON object, got {_json_kind(args)}'
    return ToolCall(name.strip(), args)


class HermesFormat:
    """``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``; several calls per action allowed."""

    name = "hermes"
    call_open = "<tool_call>"
    call_close = "</tool_call>"

    def parse(self, text: str) -> ParsedAction:
        text = without_thinking(text)
        calls: list[ToolCall] = []
        errors: list[str] = []
        spans: list[tuple[int, int]] = []
        for n, (pos, body, error) in enumerate(_hermes_blocks(text, self.call_open, self.call_close), 1):
            if body is not None:
                spans.append((pos, pos + len(self.call_open) + len(body) + len(self.call_close)))
            parsed = _parse_hermes_body(body) if body is not None else error
            if isinstance(parsed, ToolCall):
                calls.append(parsed)
            else:
                errors.append(f"malformed tool call #{n}: {parsed}")
        return ParsedAction(tuple(calls), tuple(errors), _answer_outside(text, spans))

    def instructions(self) -> str:
        return (
            "To call a tool, write a JSON object with its name and arguments between <tool_call> and "
            '</tool_call>:\n<tool_call>\n{"name": <tool-name>, "arguments": <args-json-object>}\n'
            "</tool_call>\nYou may call several tools in one message; their results come back in the "
            "next message. When you know the final answer, write it between <answer> and </answer>, "
            "e.g. <answer>Paris</answer>."
        )

    def __repr__(self) -> str:
        return "HermesFormat()"


class TagsFormat:
    """``<NAME>text</NAME>`` per tool: ``<search>q</search>`` is ``ToolCall("search", {"query": q})``."""

    name = "tags"

    def __init__(
        self, tool_names: Sequence[str] = ("search",), param_names: Mapping[str, str] | None = None
    ) -> None:
        names = [tool_names] if isinstance(tool_names, str) else list(tool_names)
        if not names:
            raise ArlkitError("TagsFormat needs at least one tool name")
        for n in names:
            if not _TAG_NAME.match(n) or n == "answer":
                raise ArlkitError(
                    f"TagsFormat: {n!r} cannot be a tag name (letters, digits, _ and -; not 'answer')"
                )
        self.tool_names: tuple[str, ...] = tuple(names)
        self.param_names: dict[str, str] = {n: (param_names or {}).get(n, "query") for n in names}
        # The first tool's tags: what a rollout uses as the call delimiters / stop string.
        self.call_open = f"<{names[0]}>"
        self.call_close = f"</{names[0]}>"

    def parse(self, text: str) -> ParsedAction:
        text = without_thinking(text)
        found: list[tuple[int, str, str | None, str | None]] = []
        for tname in self.tool_names:
            found += [(p, tname, b, e) for p, b, e in _scan_blocks(text, f"<{tname}>", f"</{tname}>")]
        found.sort(key=lambda f: f[0])
        calls: list[ToolCall] = []
        errors: list[str] = []
        spans: list[tuple[int, int]] = []
        for n, (pos, tname, body, error) in enumerate(found, 1):
            if body is None:
                errors.append(f"malformed tool call #{n}: {error}")
            else:
                calls.append(ToolCall(tname, {self.param_names[tname]: body.strip()}))
                spans.append((pos, pos + 2 * len(tname) + 5 + len(body)))  # <name>body</name>
        return ParsedAction(tuple(calls), tuple(errors), _answer_outside(text, spans))

    def instructions(self) -> str:
        uses = ", ".join(f"<{n}>{self.param_names[n]}</{n}>" for n in self.tool_names)
        return (
            f"To use a tool, write its input between its tags: {uses}. The result comes back in the "
            "next message. When you know the final answer, write it between <answer> and </answer>, "
            "e.g. <answer>Paris</answer>."
        )

    def __repr__(self) -> str:
        return f"TagsFormat(tool_names={self.tool_names!r})"


FORMATS: dict[str, type] = {"hermes": HermesFormat, "tags": TagsFormat}


def get_format(name: str, **kw: object) -> ActionFormat:
    """The action format called ``name``, built with ``kw`` (e.g. ``tool_names=`` for ``tags``)."""
    if name not in FORMATS:
        raise ArlkitError(f"unknown action format {name!r}; valid: {', '.join(sorted(FORMATS))}")
    return FORMATS[name](**kw)
