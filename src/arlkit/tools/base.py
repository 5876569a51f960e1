"""Tool protocol, the ``@tool`` decorator and JSON-schema argument validation.

Tools work in text: they take JSON-like keyword arguments (as parsed from the model's tool
call) and return a :class:`ToolResult`. Nothing here depends on torch.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, Union, runtime_checkable

from arlkit.errors import ArlkitError

__all__ = [
    "FunctionTool",
    "RowTool",
    "Tool",
    "ToolArgumentError",
    "ToolResult",
    "tool",
    "tool_schema",
    "validate_arguments",
]


class ToolArgumentError(ArlkitError):
    """The arguments of a tool call do not match the tool's parameter schema."""


@dataclass(frozen=True)
class ToolResult:
    """What a tool returns: the observation text, whether it succeeded, an optional process reward."""

    text: str
    ok: bool = True
    reward: float | None = None


@runtime_checkable
class Tool(Protocol):
    """Anything with a name, a description, a JSON schema of its parameters and ``__call__(**kwargs)``."""

    name: str
    description: str
    parameters: dict

    def __call__(self, **kwargs: Any) -> ToolResult: ...


@runtime_checkable
class RowTool(Protocol):
    """A tool whose data depend on the episode's row (the question's own paragraphs, its database).

    ToolEnv calls ``bind_row(row)`` at every reset, so such a tool must belong to one env (a task's
    ``make_env`` builds a fresh one per episode), never be shared between concurrent episodes.
    """

    def bind_row(self, row: dict) -> None: ...


def tool_schema(t: Tool) -> dict:
    """The OpenAI/Qwen function-calling schema of a tool, as chat templates expect in ``tools=``."""
    return {
        "type": "function",
        "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
    }


# ---------------------------------------------------------------------------------------------
# Type hints -> JSON schema
# ---------------------------------------------------------------------------------------------

_SCALARS: dict[type, str] = {str: "string", bool: "boolean", int: "integer", float: "number"}


def _strip_optional(hint: Any) -> tuple[Any, bool]:
    """Return (inner hint, was_optional) for ``X | None`` / ``Optional[X]``; other unions are kept."""
    origin = typing.get_origin(hint)
    if origin is Union or origin is types.UnionType:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0], True
    return hint, False


def _hint_schema(hint: Any, where: str) -> dict:
    """JSON schema of one (non-optional) type hint; ``where`` names the parameter in errors."""
    if hint in _SCALARS:
        return {"type": _SCALARS[hint]}
    if hint is list:
        return {"type": "array"}
    if hint is dict:
        return {"type": "object"}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list and len(args) == 1:
        return {"type": "array", "items": _hint_schema(args[0], where)}
    if origin is dict:
        return {"type": "object"}
    if origin is Literal and args:
        kinds = {type(a) for a in args}
        if len(kinds) == 1 and next(iter(kinds)) in _SCALARS:
            return {"type": _SCALARS[next(iter(kinds))], "enum": list(args)}
        return {"enum": list(args)}
    raise ArlkitError(
        f"{where}: unsupported type hint {hint!r}; use str, int, float, bool, list[X], dict, "
        "Literal[...] or X | None"
    )


# ---------------------------------------------------------------------------------------------
# Google-style docstrings
# ---------------------------------------------------------------------------------------------

_ARG_LINE = re.compile(r"^(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_SECTION = re.compile(r"^(Args|Arguments)\s*:\s*$")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """Split a docstring into (first paragraph, {param: description from the Args: section})."""
    lines = inspect.cleandoc(doc).splitlines()
    first: list[str] = []
    for line in lines:
        if not line.strip():
            break
        first.append(line.strip())
    params: dict[str, str] = {}
    start = next((i for i, line in enumerate(lines) if _SECTION.match(line.strip())), None)
    if start is None:
        return " ".join(first), params
    section_indent = len(lines[start]) - len(lines[start].lstrip())
    entry_indent: int | None = None
    current: str | None = None
    for line in lines[start + 1 :]:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent <= section_indent:
            break  # next section such as "Returns:"
        match = _ARG_LINE.match(line.strip())
        if match and (entry_indent is None or indent <= entry_indent):
            entry_indent = indent
            current = match.group(1).lstrip("*")
            params[current] = match.group(2).strip()
        elif current is not None:
            params[current] = (params[current] + " " + line.strip()).strip()
    return " ".join(first), params


# ---------------------------------------------------------------------------------------------
# FunctionTool and @tool
# ---------------------------------------------------------------------------------------------


def _build_parameters(fn: Callable[..., Any], fname: str, docs: dict[str, str]) -> dict:
    """The JSON-schema object of ``fn``'s parameters, from its signature and type hints."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception as exc:  # unresolvable forward references are a user error
        raise ArlkitError(f"tool function '{fname}': cannot resolve type hints ({exc})") from exc
    properties: dict[str, dict] = {}
    required: list[str] = []
    for pname, param in inspect.signature(fn).parameters.items():
        where = f"tool function '{fname}', parameter '{pname}'"
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise ArlkitError(f"{where}: tools take named arguments only (no *args, **kwargs or '/')")
        if pname not in hints:
            raise ArlkitError(f"{where}: missing type hint (the model needs a JSON type for it)")
        inner, optional = _strip_optional(hints[pname])
        schema = _hint_schema(inner, where)
        if docs.get(pname):
            schema["description"] = docs[pname]
        properties[pname] = schema
        if param.default is inspect.Parameter.empty and not optional:
            required.append(pname)
    return {"type": "object", "properties": properties, "required": required}


class FunctionTool:
    """A plain Python function exposed as a :class:`Tool`; the schema comes from hints and docstring."""

    def __init__(self, fn: Callable[..., Any], name: str | None = None) -> None:
        fname = getattr(fn, "__name__", repr(fn))
        if not fn.__doc__ or not fn.__doc__.strip():
            raise ArlkitError(
                f"tool function '{fname}' needs a docstring: its first paragraph is the tool "
                "description the model sees"
            )
        description, docs = _parse_docstring(fn.__doc__)
        self.fn = fn
        self.name: str = name or fname
        self.description: str = description
        self.parameters: dict = _build_parameters(fn, fname, docs)
        # `x: T | None` without a default is not required in the schema, so the call must supply None.
        self._none_defaults = [
            p.name
            for p in inspect.signature(fn).parameters.values()
            if p.default is inspect.Parameter.empty and p.name not in self.parameters["required"]
        ]
        self.__doc__ = fn.__doc__

    def __call__(self, **kwargs: Any) -> ToolResult:
        args = validate_arguments(self.parameters, kwargs)
        for pname in self._none_defaults:
            args.setdefault(pname, None)
        out = self.fn(**args)
        if isinstance(out, ToolResult):
            return out
        if isinstance(out, str):
            return ToolResult(out)
        # A developer error, not the model's: say exactly what to return.
        raise ArlkitError(f"tool '{self.name}' returned {type(out).__name__}; return str or ToolResult")

    def __repr__(self) -> str:
        return f"FunctionTool(name={self.name!r})"


@typing.overload
def tool(fn: Callable[..., Any], *, name: str | None = None) -> FunctionTool: ...
@typing.overload
def tool(fn: None = None, *, name: str | None = None) -> Callable[[Callable[..., Any]], FunctionTool]: ...
def tool(
    fn: Callable[..., Any] | None = None, *, name: str | None = None
) -> FunctionTool | Callable[[Callable[..., Any]], FunctionTool]:
    """Decorator turning a function into a :class:`FunctionTool`; use as ``@tool`` or ``@tool(name="x")``."""
    if fn is None:
        return lambda f: FunctionTool(f, name=name)
    return FunctionTool(fn, name=name)


# ---------------------------------------------------------------------------------------------
# Argument validation
# ---------------------------------------------------------------------------------------------


def _type_problem(schema: dict, value: Any) -> tuple[str | None, Any]:
    """(problem or None, converted value) of one value against a (small subset of) JSON schema."""
    if "enum" in schema and value not in schema["enum"]:
        return f"must be one of {schema['enum']!r}, got {value!r}", value
    kind = schema.get("type")
    # bool is a subclass of int in Python but not an integer/number in JSON.
    is_num = isinstance(value, (int, float)) and not isinstance(value, bool)
    checks = {
        "string": isinstance(value, str),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": is_num,
        "boolean": isinstance(value, bool),
        "array": isinstance(value, list),
        "object": isinstance(value, dict),
        "null": value is None,
    }
    if kind in checks and not checks[kind]:
        return f"must be {kind}, got {_json_type(value)}", value
    if kind == "number":
        return None, float(value)
    if kind == "array" and isinstance(schema.get("items"), dict):
        items = []
        for i, item in enumerate(value):
            problem, item = _type_problem(schema["items"], item)
            if problem:
                return f"item {i} {problem}", value
            items.append(item)
        return None, items
    return None, value


def _json_type(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def validate_arguments(parameters: dict, args: dict) -> dict:
    """Check ``args`` against a JSON-schema object; return them converted (int -> float for numbers).

    ``None`` for an optional parameter is dropped so the function default applies (models often send
    ``null`` for arguments they do not use). Raises :class:`ToolArgumentError` listing every problem.
    """
    if not isinstance(args, dict):
        raise ToolArgumentError(f"arguments must be a JSON object, got {_json_type(args)}")
    properties: dict = parameters.get("properties", {}) or {}
    required = list(parameters.get("required", []) or [])
    allow_extra = parameters.get("additionalProperties") is True
    problems: list[str] = []
    out: dict = {}
    for key in required:
        if key not in args or (args[key] is None and properties.get(key, {}).get("type") != "null"):
            problems.append(f"missing required argument '{key}'")
    for key, value in args.items():
        if key not in properties:
            if allow_extra:
                out[key] = value
            else:
                expected = ", ".join(properties) or "none"
                problems.append(f"unknown argument '{key}' (expected: {expected})")
            continue
        if value is None and properties[key].get("type") != "null":
            continue  # optional: the default applies; required: reported as missing above
        problem, converted = _type_problem(properties[key], value)
        if problem:
            problems.append(f"argument '{key}' {problem}")
        out[key] = converted
    if problems:
        raise ToolArgumentError("; ".join(problems))
    return out
