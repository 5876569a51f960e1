"""The action parsing rules of envs/parsing.py's docstring (issue 19), in both formats: what runs and what
counts as the answer when calls, answers and <think> nest or cross."""

from __future__ import annotations

import pytest

from arlkit.envs.parsing import ParsedAction, get_format


def _hermes(query: str) -> str:
    return f'<tool_call>{{"name": "search", "arguments": {{"query": "{query}"}}}}</tool_call>'


def _tags(query: str) -> str:
    return f"<search>{query}</search>"


FORMATS = {"hermes": (get_format("hermes"), _hermes), "tags": (get_format("tags"), _tags)}


def _parse(fmt: str, text: str) -> ParsedAction:
    return FORMATS[fmt][0].parse(text)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_a_call_inside_think_does_not_run(fmt) -> None:
    call = FORMATS[fmt][1]
    parsed = _parse(fmt, f"<think>maybe {call('a')}</think>{call('b')}")
    assert [c.arguments["query"] for c in parsed.calls] == ["b"] and not parsed.errors
    unclosed = _parse(fmt, f"<think>still thinking {call('a')}")  # everything after <think> is reasoning
    assert unclosed.calls == () and unclosed.answer is None


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_an_answer_inside_think_does_not_count(fmt) -> None:
    assert _parse(fmt, "<think><answer>draft</answer></think>").answer is None
    assert _parse(fmt, "<think><answer>draft</answer></think><answer>final</answer>").answer == "final"
    assert _parse(fmt, "<answer></answer>").answer == ""  # an empty answer is still an answer


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_an_answer_inside_a_calls_argument_is_not_an_answer(fmt) -> None:
    parsed = _parse(fmt, FORMATS[fmt][1]("<answer>42</answer>"))
    assert parsed.answer is None and len(parsed.calls) == 1  # the call runs with the text as its argument


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_an_unclosed_answer_is_no_answer_and_the_call_after_it_runs(fmt) -> None:
    parsed = _parse(fmt, "<answer>42 " + FORMATS[fmt][1]("q"))
    assert parsed.answer is None and [c.arguments["query"] for c in parsed.calls] == ["q"]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_an_unclosed_call_does_not_run(fmt) -> None:
    call = FORMATS[fmt][1]("q")
    parsed = _parse(fmt, call[: -len("</tool_call>") if fmt == "hermes" else -len("</search>")])
    assert parsed.calls == () and parsed.errors and "unclosed" in parsed.errors[0]


def test_an_answer_crossing_a_calls_tags_is_not_an_answer() -> None:
    # <search>a <answer>b</search> c</answer>: the search holds "a <answer>b"; what is left has no <answer>
    parsed = _parse("tags", "<search>a <answer>b</search> c</answer>")
    assert parsed.answer is None and parsed.calls[0].arguments == {"query": "a <answer>b"}


def test_a_call_inside_another_calls_argument_does_not_run_as_a_call_of_its_own() -> None:
    # hermes reads the call's JSON object as JSON: the inner call is the outer one's query text
    inner = _hermes("x").replace('"', '\\"')
    parsed = _parse(
        "hermes", f'<tool_call>{{"name": "search", "arguments": {{"query": "{inner}"}}}}</tool_call>'
    )
    assert len(parsed.calls) == 1 and not parsed.errors
    assert parsed.calls[0].arguments["query"] == _hermes("x")
    # with the quotes left unescaped the outer body is no JSON, so it is no argument: the text reads as an
    # unclosed call (an error), a well-formed call (runs), then a stray close (an error)
    raw = f'<tool_call>{{"name": "search", "arguments": {{"query": "{_hermes("x")}"}}}}</tool_call>'
    broken = _parse("hermes", raw)
    assert [c.arguments for c in broken.calls] == [{"query": "x"}] and len(broken.errors) == 2
