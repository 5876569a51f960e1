"""Parse a model's action text into tool calls and a final answer.

Two formats: ``hermes`` (``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, as Qwen's
chat template uses) and ``tags`` (``<search>query</search>``, Search-R1/DART style). Both use
``<answer>...</answer>`` for the final answer. Parsing never raises on model output: malformed
calls become messages in :attr:`ParsedAction.errors`.
"""

from __future__ import annotations

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
]

ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_TAG_NAME = re.compile(r"^[A-Za-z_][\w-]*$")


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
    """Stripped content of the last complete ``<answer>...</answer>``, or None."""
    found = _ANSWER.findall(text)
    return found[-1].strip() if found else None


def _scan_blocks(text: str, open_tag: str, close_tag: str) -> list[tuple[int, str | None, str | None]]:
    """(position, body, error) of each ``open_tag ... close_tag`` block in order.

    Unclosed opens (including an open followed by another open) and stray closes become errors
    with body None, so one malformed block does not swallow the well-formed ones after it.
    """
    blocks: list[tuple[int, str | None, str | None]] = []
    pos = 0
    while True:
        o, c = text.find(open_tag, pos), text.find(close_tag, pos)
        if o == -1 and c == -1:
            return blocks
        if o == -1 or (c != -1 and c < o):
            blocks.append((c, None, f"found {close_tag} without a matching {open_tag}"))
            pos = c + len(close_tag)
            continue
        start = o + len(open_tag)
        c, nxt = text.find(close_tag, start), text.find(open_tag, start)
        if c == -1 or (nxt != -1 and nxt < c):
            blocks.append((o, None, f"unclosed {open_tag} (missing {close_tag})"))
            if nxt == -1:
                return blocks
            pos = nxt
            continue
        blocks.append((o, text[start:c], None))
        pos = c + len(close_tag)


def _json_kind(value: object) -> str:
    names = {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _parse_hermes_body(body: str) -> ToolCall | str:
    """A ToolCall, or an error message (without position) for a malformed body."""
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as exc:
        return f"invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    if not isinstance(obj, dict):
        return f'expected a JSON object with "name" and "arguments", got {_json_kind(obj)}'
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return 'missing "name" (the tool name as a string)'
    args = obj.get("arguments", {})
    if isinstance(args, str):  # some models emit the arguments as a JSON-encoded string
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
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
        calls: list[ToolCall] = []
        errors: list[str] = []
        for n, (_, body, error) in enumerate(_scan_blocks(text, self.call_open, self.call_close), 1):
            parsed = _parse_hermes_body(body) if body is not None else error
            if isinstance(parsed, ToolCall):
                calls.append(parsed)
            else:
                errors.append(f"malformed tool call #{n}: {parsed}")
        return ParsedAction(tuple(calls), tuple(errors), extract_answer(text))

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
        found: list[tuple[int, str, str | None, str | None]] = []
        for tname in self.tool_names:
            found += [(p, tname, b, e) for p, b, e in _scan_blocks(text, f"<{tname}>", f"</{tname}>")]
        found.sort(key=lambda f: f[0])
        calls: list[ToolCall] = []
        errors: list[str] = []
        for n, (_, tname, body, error) in enumerate(found, 1):
            if body is None:
                errors.append(f"malformed tool call #{n}: {error}")
            else:
                calls.append(ToolCall(tname, {self.param_names[tname]: body.strip()}))
        return ParsedAction(tuple(calls), tuple(errors), extract_answer(text))

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
