"""Caps against a policy farming tools (issue 19): calls per action, concurrent calls of one action, and
process rewards per step and per episode, with none paid for calls whose results the policy never sees."""

from __future__ import annotations

import threading
import time

import pytest

from arlkit.envs.rewards import bounded_process_reward
from arlkit.envs.tool_env import ToolEnv
from arlkit.errors import ArlkitError
from arlkit.tools.base import ToolResult


class _Search:
    """Pays 0.1 per call (a process reward) and records how many calls ran and the most at once."""

    name, description = "search", "search"

    def __init__(self, sleep_s: float = 0.0) -> None:
        self.parameters = {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
        }
        self.sleep_s, self.calls, self.running, self.peak = sleep_s, 0, 0, 0
        self._lock = threading.Lock()

    def __call__(self, query: str) -> ToolResult:
        with self._lock:
            self.calls += 1
            self.running += 1
            self.peak = max(self.peak, self.running)
        time.sleep(self.sleep_s)
        with self._lock:
            self.running -= 1
        return ToolResult(f"results for {query}", reward=0.1)


class _Scorer:
    def prompt(self, row: dict) -> str:
        return row["q"]

    def score(self, answer: str | None, row: dict) -> dict[str, float]:
        return {"em": float(answer == row["a"])}


def _calls(n: int) -> str:
    return '<tool_call>{"name": "search", "arguments": {"query": "x"}}</tool_call>' * n


def _env(tool: _Search, **kw) -> ToolEnv:
    env = ToolEnv([tool], _Scorer(), fmt="hermes", **kw)
    env.reset({"q": "?", "a": "y"})
    return env


def test_an_action_runs_at_most_max_calls_per_action_and_the_rest_are_told_so() -> None:
    tool = _Search()
    step = _env(tool, max_turns=4).step(_calls(1000))
    assert tool.calls == 8  # the default cap
    assert len(step.observations) == 1000
    assert step.observations[8]["content"] == "Error: not run: at most 8 tool calls per action"
    # 8 calls ran, 0.1 each = 0.8, clipped to the step cap 0.3 (not 100, as 1,000 paid calls earned before)
    assert step.reward == pytest.approx(0.3)


def test_process_reward_is_bounded_per_episode() -> None:
    env = _env(_Search(), max_turns=10)
    rewards = [env.step(_calls(2)).reward for _ in range(4)]
    # 0.2 per step (2 calls x 0.1) until the episode's 0.5: 0.2, 0.2, then 0.1, then nothing
    assert rewards == pytest.approx([0.2, 0.2, 0.1, 0.0])


def test_calls_on_the_last_turn_earn_nothing() -> None:
    tool = _Search()
    env = _env(tool, max_turns=1, max_calls_per_action=50)
    step = env.step(_calls(50))
    assert step.done and step.finish_reason == "max_turns" and tool.calls == 50 and step.reward == 0.0


def test_one_action_runs_its_calls_with_bounded_concurrency() -> None:
    tool = _Search(sleep_s=0.05)
    step = _env(tool, max_turns=4, max_calls_per_action=12, max_concurrent_calls=3).step(_calls(12))
    assert tool.calls == 12 and all(r.ok for r in step.calls)
    assert 1 <= tool.peak <= 3  # not 12 sandboxes at once


def test_bounded_process_reward_arithmetic() -> None:
    assert bounded_process_reward(2.0, 0.0, 0.3, 0.5) == pytest.approx(0.3)  # step cap
    assert bounded_process_reward(2.0, 0.3, 0.3, 0.5) == pytest.approx(0.2)  # 0.5 - 0.3 left in the episode
    assert bounded_process_reward(2.0, 0.5, 0.3, 0.5) == 0.0
    assert bounded_process_reward(-5.0, 0.0, 0.3, 0.5) == pytest.approx(-0.3)  # penalties are bounded too
    assert bounded_process_reward(0.1, -0.5, 0.3, 0.5) == pytest.approx(0.1)


def test_bad_caps_fail_naming_the_field() -> None:
    with pytest.raises(ArlkitError, match="max_calls_per_action"):
        ToolEnv([_Search()], _Scorer(), max_calls_per_action=0)
    with pytest.raises(ArlkitError, match="process reward caps"):
        ToolEnv([_Search()], _Scorer(), process_reward_step_cap=-1)
