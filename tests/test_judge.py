"""LLM-as-judge (envs/judge.py, models/judge.py): the verdict as a named reward component, with a scripted
judge for the arithmetic and the tiny model as a real judge for the plumbing."""

from __future__ import annotations

import pytest

from arlkit.envs.judge import JudgeScorer, verdict
from arlkit.envs.tool_env import ToolEnv
from arlkit.models.judge import hf_judge


class _Exact:
    def prompt(self, row: dict) -> str:
        return row["question"]

    def score(self, answer: str | None, row: dict) -> dict[str, float]:
        return {"em": float(answer == row["answer"])}


ROW = {"question": "Capital of France?", "answer": "Paris"}


@pytest.mark.parametrize(
    ("reply", "value"), [("Yes.", 1.0), ("  **yes**, it is", 1.0), ("No", 0.0), ("yesterday", 1.0), ("", 0.0)]
)
def test_verdict_reads_a_leading_yes(reply, value) -> None:
    assert verdict(reply) == value


def test_the_verdict_is_a_weighted_reward_component() -> None:
    seen: list[list[dict]] = []

    def judge(messages: list[dict]) -> str:
        seen.append(messages)
        return "Yes" if "paris" in messages[0]["content"].split("Candidate answer: ")[1].lower() else "No"

    env = ToolEnv([], JudgeScorer(_Exact(), judge), max_turns=1, reward_weights={"em": 1.0, "judge": 0.5})
    env.reset(ROW)
    env.step("<answer>paris</answer>")  # not an exact match, but the judge accepts it
    result = env.result()
    assert result.reward == 0.5  # 1.0 * em 0 + 0.5 * judge 1
    assert result.metrics["reward/judge"] == 1.0
    assert "Reference answer: Paris" in seen[0][0]["content"]
    env.reset(ROW)
    env.step("no answer here")
    assert env.result().metrics["judge"] == 0.0 and len(seen) == 1  # nothing to judge: no call


def test_the_tiny_model_judges_through_its_chat_template(tiny) -> None:
    chat = hf_judge(str(tiny.sft_dir), max_new_tokens=4)
    calls: list[str] = []

    def recorded(messages: list[dict]) -> str:
        calls.append(chat(messages))
        return calls[-1]

    scores = JudgeScorer(_Exact(), recorded).score("Paris", ROW)
    # the tiny model's reply is noise, but a real one: greedy (the same twice), read by `verdict`
    assert len(calls) == 1 and isinstance(calls[0], str)
    assert scores == {"em": 1.0, "judge": verdict(calls[0])}
    assert JudgeScorer(_Exact(), recorded).score("Paris", ROW) == scores and calls[1] == calls[0]
