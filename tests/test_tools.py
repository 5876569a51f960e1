"""Tools: the @tool decorator and its schema, argument validation, calculator, BM25 search."""

from __future__ import annotations

from typing import Literal, Optional

import pytest

from arlkit.errors import ArlkitError
from arlkit.tools import (
    BM25Search,
    FunctionTool,
    Tool,
    ToolArgumentError,
    ToolResult,
    calculator,
    tool,
    tool_schema,
    validate_arguments,
)


@tool
def lookup(
    query: str,
    k: int = 3,
    scale: float = 1.0,
    exact: bool = False,
    tags: list[str] | None = None,
    mode: Literal["fast", "slow"] = "fast",
    extra: dict | None = None,
    note: Optional[str] = None,  # noqa: UP045 -- the Optional spelling must work too
) -> str:
    """Look something up.

    This second paragraph is not part of the description.

    Args:
        query: What to look up.
        k: How many results
            to return.
        scale (float): A multiplier.
        exact: Exact matching only.
        tags: Filter tags.
        mode: Speed.

    Returns:
        The results.
    """
    return f"{query}|{k}|{scale!r}|{exact}|{tags}|{mode}|{extra}|{note}"


def test_decorator_schema() -> None:
    schema = tool_schema(lookup)
    assert schema["type"] == "function"
    fn = schema["function"]
    assert fn["name"] == "lookup"
    assert fn["description"] == "Look something up."
    props = fn["parameters"]["properties"]
    assert fn["parameters"]["type"] == "object"
    assert fn["parameters"]["required"] == ["query"]
    assert props["query"] == {"type": "string", "description": "What to look up."}
    assert props["k"] == {"type": "integer", "description": "How many results to return."}
    assert props["scale"] == {"type": "number", "description": "A multiplier."}
    assert props["exact"]["type"] == "boolean"
    assert props["tags"] == {"type": "array", "items": {"type": "string"}, "description": "Filter tags."}
    assert props["mode"] == {"type": "string", "enum": ["fast", "slow"], "description": "Speed."}
    assert props["extra"] == {"type": "object"}
    assert props["note"] == {"type": "string"}
    assert isinstance(lookup, FunctionTool) and isinstance(lookup, Tool)


def test_decorator_with_name_and_optional_required() -> None:
    @tool(name="adder")
    def add(a: int, b: int | None) -> ToolResult:
        """Add numbers."""
        return ToolResult(str(a + (b or 0)), reward=0.5)

    assert add.name == "adder"
    assert add.parameters["required"] == ["a"]  # Optional without default is still not required
    assert add(a=2, b=3) == ToolResult("5", reward=0.5)
    assert add(a=2, b=None).text == "2"


def test_call_validates_and_converts() -> None:
    out = lookup(query="x", k=2, scale=3, tags=["a"], mode="slow")
    assert out == ToolResult("x|2|3.0|False|['a']|slow|None|None")  # int -> float for number
    with pytest.raises(ToolArgumentError, match="'k' must be integer, got string"):
        lookup(query="x", k="2")


def test_bad_definitions_raise() -> None:
    def no_doc(x: int) -> str:
        return ""

    with pytest.raises(ArlkitError, match=r"no_doc.*docstring"):
        tool(no_doc)

    def bad_hint(x: set) -> str:
        """Doc."""
        return ""

    with pytest.raises(ArlkitError, match=r"bad_hint.*'x'.*unsupported"):
        tool(bad_hint)

    def no_hint(x) -> str:  # type: ignore[no-untyped-def]
        """Doc."""
        return ""

    with pytest.raises(ArlkitError, match=r"no_hint.*'x'.*missing type hint"):
        tool(no_hint)

    def union(x: int | str) -> str:
        """Doc."""
        return ""

    with pytest.raises(ArlkitError, match="'x'"):
        tool(union)

    def star(*xs: int) -> str:
        """Doc."""
        return ""

    with pytest.raises(ArlkitError, match="star"):
        tool(star)


def test_bad_return_type() -> None:
    @tool
    def num() -> int:
        """Returns a number."""
        return 3

    with pytest.raises(ArlkitError, match="returned int"):
        num()


def test_validate_arguments_messages() -> None:
    params = lookup.parameters
    with pytest.raises(ToolArgumentError) as info:
        validate_arguments(params, {"k": True, "colour": 1, "mode": "medium", "tags": ["a", 2]})
    msg = str(info.value)
    assert "missing required argument 'query'" in msg
    assert "unknown argument 'colour'" in msg and "expected: query, k" in msg
    assert "'k' must be integer, got boolean" in msg  # bool is not an integer
    assert "'mode' must be one of" in msg
    assert "'tags' item 1 must be string, got integer" in msg
    assert validate_arguments(params, {"query": "q", "note": None}) == {"query": "q"}
    with pytest.raises(ToolArgumentError, match="missing required argument 'query'"):
        validate_arguments(params, {"query": None})
    with pytest.raises(ToolArgumentError, match="'scale' must be number, got boolean"):
        validate_arguments(params, {"query": "q", "scale": False})


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("1 + 2 * 3", "7"),
        ("(1 + 2) * 3", "9"),
        ("7 / 2", "3.5"),
        ("6 / 3", "2"),
        ("7 // 2", "3"),
        ("-7 % 3", "2"),
        ("2 ** 10", "1024"),
        ("-(2.5)", "-2.5"),
        ("0.1 + 0.2", "0.3"),
        ("2 ** -1", "0.5"),
        ("10 ** 100", "1" + "0" * 100),
    ],
)
def test_calculator_good(expr: str, expected: str) -> None:
    assert calculator(expression=expr) == ToolResult(expected)


@pytest.mark.parametrize(
    ("expr", "needle"),
    [
        ("1 / 0", "division by zero"),
        ("5 // 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("2 ** 101", "exponent too large"),
        ("10 ** 100 * 10", "too large"),
        ("1e300", "too large"),
        ("1" * 201, "longer than 200"),
        ("__import__('os')", "unsupported"),
        ("abs(-1)", "unsupported"),
        ("x + 1", "unsupported"),
        ("1 < 2", "unsupported"),
        ("True + 1", "unsupported"),
        ("'a' * 3", "unsupported"),
        ("(-8) ** 0.5", "not a real number"),
        ("1 +", "could not parse"),
        ("  ", "empty"),
    ],
)
def test_calculator_bad(expr: str, needle: str) -> None:
    out = calculator(expression=expr)
    assert not out.ok
    assert out.text.startswith("Error:") and needle in out.text


def _corpus() -> list[tuple[str, str]]:
    people = ["Ana Berg", "Ben Carter", "Cleo Dunn", "Dan Evans", "Eva Fischer", "Finn Gray"]
    cities = ["Oslo", "Lima", "Rome", "Kyiv", "Bern", "Quito"]
    docs = [(p, f"{p} is a painter born in {c}.") for p, c in zip(people, cities, strict=True)]
    docs += [(c, f"{c} is a city with a river and a museum.") for c in cities]
    docs += [
        (f"Topic {i}", f"Filler document number {i} about rivers, museums and painters.") for i in range(18)
    ]
    return docs


def test_bm25_finds_name_top1() -> None:
    docs = _corpus()
    assert len(docs) == 30
    search = BM25Search(docs, top_k=3)
    hits = search.retrieve("Ana Berg")
    assert hits[0] == 0
    assert len(search.retrieve("painter", k=5)) == 5
    assert len(search.retrieve("painter")) == 3  # top_k
    out = search(query="Ana Berg")
    assert out.ok and out.text.splitlines()[0] == "(1) Ana Berg: Ana Berg is a painter born in Oslo."
    assert len(out.text.splitlines()) <= 3
    assert search.parameters["required"] == ["query"] and isinstance(search, Tool)


def test_bm25_deterministic_ties_and_edge_cases() -> None:
    search = BM25Search(["same text here", "other words", "same text here", "Same   text\nhere"], top_k=10)
    assert search.retrieve("same text") == [0, 2, 3]  # equal scores: lower index first
    assert search.retrieve("same text") == search.retrieve("same text")
    assert search.retrieve("") == [] and search.retrieve("   ") == []
    assert search.retrieve("zebra") == []
    assert search(query="zebra") == ToolResult("No results.")
    blank = search(query="  ")
    assert not blank.ok and "empty" in blank.text
    assert search(query="other").text == "(1) other words"
    assert search(query="here").text.splitlines()[2] == "(3) Same text here"  # one line per doc


def test_bm25_rejects_bad_input() -> None:
    with pytest.raises(ArlkitError, match="at least one"):
        BM25Search([])
    with pytest.raises(ArlkitError, match="document 1"):
        BM25Search(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(ArlkitError, match="top_k"):
        BM25Search(["ok"], top_k=0)
