"""Envs: action parsing, the ToolEnv episode rules, QA scoring and the Agent-R1 reward."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator

import pytest

from arlkit.envs import (
    HermesFormat,
    QAScorer,
    TagsFormat,
    ToolCall,
    ToolEnv,
    agent_r1_reward,
    exact_match,
    get_format,
    make_qa_env,
    normalize_answer,
    token_f1,
)
from arlkit.errors import ArlkitError
from arlkit.tools import BM25Search, ToolResult, calculator, tool


def call(name: str, **arguments: object) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


def test_hermes_one_and_several_calls() -> None:
    fmt = HermesFormat()
    one = fmt.parse(
        'I will search.\n<tool_call>\n  {"name": "search", "arguments": {"query": "x"}}\n</tool_call>'
    )
    assert one.calls == (ToolCall("search", {"query": "x"}),)
    assert one.tool_syntax_ok and one.answer is None
    text = call("search", query="a") + "\n" + call("calculator", expression="1+1")
    two = fmt.parse(text)
    assert [c.name for c in two.calls] == ["search", "calculator"]
    assert two.calls[1].arguments == {"expression": "1+1"}


def test_hermes_arguments_as_json_string_and_missing() -> None:
    fmt = HermesFormat()
    parsed = fmt.parse('<tool_call>{"name": "search", "arguments": "{\\"query\\": \\"y\\"}"}</tool_call>')
    assert parsed.calls == (ToolCall("search", {"query": "y"}),) and parsed.tool_syntax_ok
    assert fmt.parse('<tool_call>{"name": "now"}</tool_call>').calls == (ToolCall("now", {}),)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('<tool_call>{"name": "search", "arguments": {"query": "x"</tool_call>', "invalid JSON"),
        ('<tool_call>{"arguments": {"query": "x"}}</tool_call>', 'missing "name"'),
        ('<tool_call>{"name": "search", "arguments": ["x"]}</tool_call>', "must be a JSON object, got array"),
        ('<tool_call>{"name": "search", "arguments": "not json"}</tool_call>', "not a JSON object"),
        ('<tool_call>["search"]</tool_call>', "got array"),
        ('<tool_call>{"name": "search", "arguments": {}}', "unclosed <tool_call>"),
        ('{"name": "search", "arguments": {}}</tool_call>', "without a matching <tool_call>"),
    ],
)
def test_hermes_errors(text: str, needle: str) -> None:
    parsed = HermesFormat().parse(text)
    assert parsed.calls == ()
    assert len(parsed.errors) == 1 and needle in parsed.errors[0]
    assert not parsed.tool_syntax_ok


def test_hermes_unclosed_does_not_swallow_next_call() -> None:
    parsed = HermesFormat().parse("<tool_call>{" + call("search", query="z"))
    assert parsed.calls == (ToolCall("search", {"query": "z"}),)
    assert parsed.errors == ("malformed tool call #1: unclosed <tool_call> (missing </tool_call>)",)


def test_tags_format() -> None:
    fmt = TagsFormat(("search", "calc"), param_names={"calc": "expression"})
    parsed = fmt.parse("think <calc> 1+1 </calc> then <search>Ana Berg</search> and <search>oops")
    assert parsed.calls == (
        ToolCall("calc", {"expression": "1+1"}),
        ToolCall("search", {"query": "Ana Berg"}),
    )
    assert len(parsed.errors) == 1 and "unclosed <search>" in parsed.errors[0]
    assert fmt.call_open == "<search>" and fmt.call_close == "</search>"
    assert "<calc>expression</calc>" in fmt.instructions()
    with pytest.raises(ArlkitError):
        TagsFormat(("answer",))


def test_answer_extraction_and_get_format() -> None:
    fmt = get_format("hermes")
    assert fmt.parse("<answer> first </answer> x <answer>\n Last one \n</answer>").answer == "Last one"
    assert fmt.parse("<answer>unclosed").answer is None
    assert get_format("tags").parse("<answer>x</answer>").answer == "x"
    with pytest.raises(ArlkitError, match="hermes, tags"):
        get_format("xml")


# ---------------------------------------------------------------------------------------------
# ToolEnv
# ---------------------------------------------------------------------------------------------


class FakeScorer:
    def prompt(self, row: dict) -> str:
        return f"Q: {row['q']}"

    def score(self, answer: str | None, row: dict) -> dict[str, float]:
        em = float(answer == row["a"])
        return {"em": em, "f1": em}


RELEASE = threading.Event()


@pytest.fixture(autouse=True)
def _release_hung_tools() -> Iterator[None]:
    RELEASE.clear()
    yield
    RELEASE.set()  # let the "hanging" tool's thread finish after the test


@tool
def search(query: str) -> ToolResult:
    """Search.

    Args:
        query: The query.
    """
    return ToolResult(f"found: {query}", reward=0.25)


@tool
def boom(x: int) -> str:
    """Always raises."""
    raise ValueError("kaput")


@tool
def hang(x: int) -> str:
    """Hangs until released."""
    RELEASE.wait(5)
    return "late"


@tool
def slow(tag: str) -> str:
    """Sleeps a bit."""
    time.sleep(0.4)
    return tag


ROW = {"q": "who?", "a": "Ana"}


def make_env(**kw: object) -> ToolEnv:
    kw.setdefault("tool_timeout_s", 0.2)
    return ToolEnv([search, boom, hang, slow, calculator], FakeScorer(), **kw)  # type: ignore[arg-type]


def test_full_episode() -> None:
    env = make_env(system_prompt="sys")
    assert env.reset(ROW) == [{"role": "system", "content": "sys"}, {"role": "user", "content": "Q: who?"}]
    assert [s["function"]["name"] for s in env.tools_schema][:2] == ["search", "boom"]
    step = env.step("Let me look. " + call("search", query="who"))
    assert not step.done and step.finish_reason is None
    assert step.observations == ({"role": "tool", "content": "found: who"},)
    assert step.reward == 0.25 and step.calls[0].ok and step.calls[0].name == "search"
    step = env.step("<answer>Ana</answer>")
    assert step.done and step.finish_reason == "answer" and step.answer == "Ana"
    assert step.observations == () and step.reward == 0.0
    res = env.result()
    assert res.reward == 1.0 and res.answer == "Ana" and res.finish_reason == "answer"
    assert res.metrics == {
        "em": 1.0,
        "f1": 1.0,
        "format_ok": 1.0,
        "tool_syntax_ok": 1.0,
        "answer_ok": 1.0,
        "n_calls": 1.0,
        "n_failed_calls": 0.0,
        "tool_rounds": 1.0,
        "turns": 2.0,
    }
    with pytest.raises(RuntimeError):
        env.step("<answer>again</answer>")
    assert len(env.reset(ROW)) == 2 and env.result().metrics["turns"] == 0.0
    assert make_env().reset(ROW) == [{"role": "user", "content": "Q: who?"}]  # no system_prompt


@pytest.mark.parametrize(
    ("action", "needle", "syntax"),
    [
        (
            call("serch", query="x"),
            "Error: unknown tool 'serch'; available: search, boom, hang, slow, calculator",
            True,
        ),
        (
            call("search", q="x"),
            "Error: invalid arguments for tool 'search': missing required argument 'query'",
            True,
        ),
        (call("search", query=3), "must be string, got integer", True),
        (call("boom", x=1), "Error: tool 'boom' failed: ValueError: kaput", False),
        (call("hang", x=1), "Error: tool 'hang' timed out after 0.2 s", False),
        ('<tool_call>{"name": "search", </tool_call>', "Error: malformed tool call #1: invalid JSON", True),
        (call("calculator", expression="1/0"), "Error: division by zero.", False),
    ],
)
def test_error_observations_continue(action: str, needle: str, syntax: bool) -> None:
    env = make_env()
    env.reset(ROW)
    start = time.monotonic()
    step = env.step(action)
    assert time.monotonic() - start < 1.0  # a hanging tool never hangs the env
    assert not step.done
    assert len(step.observations) == 1 and step.observations[0]["role"] == "tool"
    content = step.observations[0]["content"]
    assert content.startswith("Error: ") and needle in content
    assert not step.calls[0].ok and step.calls[0].error
    step = env.step("<answer>Ana</answer>")
    metrics = env.result().metrics
    assert metrics["tool_syntax_ok"] == float(not syntax)
    assert metrics["n_failed_calls"] == 1.0 and metrics["answer_ok"] == 1.0
    assert env.result().reward == (-0.5 if syntax else 1.0)


def test_several_calls_run_concurrently_in_order() -> None:
    env = make_env(tool_timeout_s=2.0)
    env.reset(ROW)
    start = time.monotonic()
    step = env.step(call("slow", tag="a") + call("search", query="b") + call("slow", tag="c") + call("nope"))
    assert time.monotonic() - start < 0.7  # two 0.4 s calls ran at the same time
    contents = [o["content"] for o in step.observations]
    assert contents[:3] == ["a", "found: b", "c"] and contents[3].startswith("Error: unknown tool 'nope'")
    assert [r.name for r in step.calls] == ["slow", "search", "slow", "nope"]
    assert step.reward == 0.25


def test_tool_threads_are_reused_and_a_hung_call_keeps_only_its_own() -> None:
    ran_on: list[threading.Thread] = []  # kept alive, so their ids stay distinct

    @tool
    def where(tag: str) -> str:
        """Records the thread it runs on."""
        ran_on.append(threading.current_thread())
        return tag

    env = ToolEnv([where, hang], FakeScorer(), tool_timeout_s=0.2)  # type: ignore[arg-type]
    env.reset(ROW)
    env.step(call("where", tag="warm-up"))
    existing = set(threading.enumerate())
    for i in range(20):
        env.reset(ROW)
        assert env.step(call("where", tag=str(i))).observations[0]["content"] == str(i)
    assert all(t in existing for t in ran_on)  # sequential calls go to threads that wait for work
    env.reset(ROW)
    assert "timed out" in env.step(call("hang", x=1)).observations[0]["content"]
    start = time.monotonic()
    env.reset(ROW)
    assert env.step(call("where", tag="after")).observations[0]["content"] == "after"
    assert time.monotonic() - start < 0.5  # the hung call keeps its thread; this call ran on another


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_tool_calls_work_in_a_forked_child() -> None:
    env = make_env()
    env.reset(ROW)
    env.step(call("search", query="parent"))  # the parent now has an idle tool thread
    pid = os.fork()
    if pid == 0:  # the child has none of the parent's threads
        env.reset(ROW)
        os._exit(0 if env.step(call("search", query="x")).observations[0]["content"] == "found: x" else 1)
    assert os.waitpid(pid, 0)[1] == 0


def test_max_turns_drops_observations() -> None:
    env = make_env(max_turns=2)
    env.reset(ROW)
    assert not env.step(call("search", query="1")).done
    step = env.step(call("search", query="2"))
    assert step.done and step.finish_reason == "max_turns" and step.observations == ()
    # the call ran (it is recorded) but its 0.25 tool reward is not paid: the policy never sees its result
    assert step.calls[0].ok and step.reward == 0.0
    res = env.result()
    assert res.answer is None and res.reward == -0.5 and res.metrics["n_calls"] == 2.0


def test_no_action_and_answer_wins() -> None:
    env = make_env()
    env.reset(ROW)
    step = env.step("I think it is Ana.")
    assert step.done and step.finish_reason == "no_action" and step.answer is None
    assert env.result().reward == -0.5  # no answer, syntax ok
    env.reset(ROW)
    step = env.step(call("search", query="x") + "<answer>Ana</answer>")
    assert step.done and step.finish_reason == "answer" and step.calls == ()


def test_refuse_tools() -> None:
    env = make_env(refuse_tools=True)
    env.reset(ROW)
    step = env.step(call("search", query="x"))
    assert not step.done
    assert step.observations == (
        {"role": "tool", "content": "Error: tool calls are not allowed in this episode; answer directly."},
    )
    assert not step.calls[0].ok
    env.step("<answer>Bob</answer>")
    assert env.result().reward == 0.0 and env.result().metrics["n_failed_calls"] == 1.0


REFUSED = {"role": "tool", "content": "Error: tool calls are not allowed in this episode; answer directly."}


def test_tool_round_cap_refuses_rounds_after_the_cap() -> None:
    # T = 2 with 2 answer turns: max_turns = 4. Rounds 1 and 2 run (one of them holds two calls and a
    # malformed one: still one round); round 3 is refused; turn 4 answers.
    env = make_env(max_turns=9).limit_tool_rounds(2, answer_turns=2)
    assert env.max_turns == 4 and env.max_tool_rounds == 2
    env.reset(ROW)
    first = env.step(call("search", query="a"))
    assert first.calls[0].ok and first.observations == ({"role": "tool", "content": "found: a"},)
    second = env.step(call("search", query="b") + call("search", query="c") + "<tool_call>{oops</tool_call>")
    assert [c.ok for c in second.calls] == [True, True, False] and "found: c" in second.observations[1][
        "content"
    ]
    third = env.step(call("search", query="d"))
    assert not third.done and third.observations == (REFUSED,) and not third.calls[0].ok
    last = env.step("<answer>Ana</answer>")
    assert last.done and last.finish_reason == "answer"
    m = env.result().metrics
    # 5 calls: 3 ran (ok), the malformed one and the refused one failed; the refusal is not a syntax error
    assert m["tool_rounds"] == 2.0 and m["n_calls"] == 5.0 and m["n_failed_calls"] == 2.0
    assert m["em"] == 1.0 and m["tool_syntax_ok"] == 0.0  # the malformed call, not the refusal


def test_tool_round_cap_zero_refuses_every_call_and_ends_after_answer_turns() -> None:
    env = make_env(max_tool_rounds=0)  # T = 0: like refuse_tools, keeping max_turns
    env.reset(ROW)
    assert env.step(call("search", query="a")).observations == (REFUSED,)
    assert env.result().metrics["tool_rounds"] == 0.0 and env.result().metrics["tool_syntax_ok"] == 1.0
    env = make_env().limit_tool_rounds(0, answer_turns=1)  # one turn: a call there ends the episode
    env.reset(ROW)
    step = env.step(call("search", query="a"))
    assert step.done and step.finish_reason == "max_turns" and not step.calls[0].ok
    env.limit_tool_rounds(
        1
    )  # T = 1 on the same env (answer_turns=None keeps max_turns): the first round runs
    env.reset(ROW)
    assert env.step(call("search", query="x")).calls[0].ok
    with pytest.raises(ArlkitError, match="max_tool_rounds"):
        env.limit_tool_rounds(-1)
    with pytest.raises(ArlkitError, match="answer_turns"):
        env.limit_tool_rounds(1, answer_turns=0)


def test_reward_fn_override_and_misuse() -> None:
    env = make_env(reward_fn=lambda m: 2 * m["f1"] + m["turns"])
    with pytest.raises(RuntimeError):
        env.step("x")
    env.reset(ROW)
    env.step("<answer>Ana</answer>")
    assert env.result().reward == 3.0
    with pytest.raises(ArlkitError, match="unique"):
        ToolEnv([search, search], FakeScorer())
    with pytest.raises(ArlkitError, match="max_turns"):
        ToolEnv([search], FakeScorer(), max_turns=0)


def test_tags_env_with_bm25_and_qa() -> None:
    docs = [("Ana Berg", "Ana Berg was born in Oslo."), ("Oslo", "Oslo is the capital of Norway.")]
    env = make_qa_env([BM25Search(docs, top_k=1)], fmt="tags", max_turns=3)
    messages = env.reset({"question": "Where was Ana Berg born?", "answer": "Oslo"})
    assert messages[0]["role"] == "system" and "<search>query</search>" in messages[0]["content"]
    step = env.step("<search>Ana Berg</search>")
    assert step.observations[0]["content"] == "(1) Ana Berg: Ana Berg was born in Oslo."
    env.step("<answer>oslo.</answer>")
    res = env.result()
    assert res.reward == 1.0 and res.metrics["em"] == 1.0
    assert make_qa_env([], system_prompt=None).reset({"question": "q", "answer": "a"})[0]["role"] == "user"
    with pytest.raises(ArlkitError, match="question"):
        env.reset({"answer": "x"})


# ---------------------------------------------------------------------------------------------
# QA scoring and reward
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("em", "answer_ok", "syntax_ok", "expected"),
    [
        (1.0, True, True, 1.0),
        (0.0, True, True, 0.0),
        (1.0, False, True, -0.5),
        (1.0, True, False, -0.5),
        (0.0, False, False, -1.0),
    ],
)
def test_agent_r1_reward(em: float, answer_ok: bool, syntax_ok: bool, expected: float) -> None:
    assert agent_r1_reward(em, answer_ok, syntax_ok) == expected


def test_squad_em_f1() -> None:
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("An apple a day") == "apple day"
    assert exact_match("the Eiffel Tower.", "Eiffel Tower") == 1.0
    assert exact_match("Eiffel", ["Paris", "eiffel"]) == 1.0
    assert exact_match(None, "x") == 0.0 and exact_match("x", []) == 0.0
    assert token_f1("Eiffel Tower in Paris", "the Eiffel Tower") == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert token_f1("London", ["Paris", "london city"]) == pytest.approx(2 / 3)
    assert token_f1("nothing", "Paris") == 0.0 and token_f1(None, "Paris") == 0.0
    scorer = QAScorer()
    row = {"question": "q", "answer": "Oslo", "answer_aliases": ["Christiania"]}
    assert scorer.prompt(row) == "q"
    assert scorer.score("christiania", row) == {"em": 1.0, "f1": 1.0}
    with pytest.raises(ArlkitError, match="gold answer"):
        scorer.prompt({"question": "q"})
