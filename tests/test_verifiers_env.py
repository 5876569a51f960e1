"""The `verifiers` task (tasks/verifiers_taskset.py, envs/verifiers_env.py) with the real verifiers package
(0.4, v1 API) and tasksets written with its own classes: rows and splits, tools, rewards as named components,
a reward that raises as an env error, bad configs at start, and examples/verifiers_letters.py trained by
`arlkit train`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import verifiers.v1 as vf  # the `verifiers` extra, which `make install` installs: tested, never skipped
from conftest import train_example

from arlkit.config import load_config
from arlkit.envs.message_env import episode_env
from arlkit.envs.verifiers_env import VerifiersScoringError
from arlkit.errors import ArlkitError
from arlkit.rollout.engine import Episode, RolloutParams
from arlkit.tasks import build_task

ROOT = Path(__file__).parents[1]
HERE = "test_verifiers_env"  # this module, as `task.taskset` import paths name it
__all__ = ["ClockTaskset"]  # what verifiers loads when the module is named as a taskset id (its plugin form)


class EchoData(vf.TaskData):
    answer: str


class EchoTask(vf.Task[EchoData]):
    @vf.reward
    async def exact(self, trace: vf.Trace) -> float:
        return float(trace.last_reply == self.data.answer)

    @vf.reward(weight=-0.5)
    async def long(self, trace: vf.Trace) -> float:
        return float(len(trace.last_reply) > 5)

    @vf.metric
    async def turns(self, trace: vf.Trace) -> float:
        return float(trace.num_turns)


class RaisingTask(EchoTask):
    @vf.reward
    async def boom(self, trace: vf.Trace) -> float:
        raise ValueError("the rubric broke")


class RuntimeTask(EchoTask):
    @vf.reward
    async def in_box(self, trace: vf.Trace, runtime: vf.Runtime) -> float:
        return 1.0


class Clock(vf.Toolset[vf.SharedToolsetConfig]):  # a taskset's shared tools; the default prefix: `clock_`
    @vf.tool
    async def now(self) -> str:
        """The time."""
        return "noon"


class ClockTaskset(vf.Taskset[EchoTask, vf.TasksetConfig]):
    @classmethod
    def toolsets(cls, config: vf.TasksetConfig) -> list[vf.Toolset]:
        return [Clock(vf.SharedToolsetConfig())]

    def load(self) -> list[EchoTask]:
        return [EchoTask(EchoData(prompt=f"Say {w}.", answer=w), self.config.task) for w in ("noon", "dawn")]


class Endless(vf.Taskset[EchoTask, vf.TasksetConfig]):
    INFINITE = True

    def load(self):
        i = 0
        while True:
            yield EchoTask(EchoData(prompt=f"Say {i}.", answer=str(i)), self.config.task)
            i += 1


async def said_noon(trace: vf.Trace) -> float:  # a reward plugged in by config (TaskConfig.rewards)
    return float("noon" in trace.last_reply)


def echo_tasks(n: int = 10, cls: type = EchoTask) -> list[vf.Task]:
    """A list of tasks from a function (`task.taskset_args` are its arguments), with a system prompt."""
    return [cls(EchoData(prompt=f"Say {i}.", system_prompt="Echo.", answer=str(i))) for i in range(n)]


def clock_env() -> vf.Env:
    """A verifiers Env (a SingleAgentEnv over this module's taskset), as a `load_environment` would give."""
    return vf.load_environment(vf.resolve_env_config({"taskset": {"id": HERE}}))


def raising_tasks() -> list[vf.Task]:
    return echo_tasks(4, RaisingTask)


def runtime_tasks() -> list[vf.Task]:
    return echo_tasks(4, RuntimeTask)


def _task(monkeypatch, *overrides: str):
    monkeypatch.chdir(ROOT)  # where the example's module path starts
    return build_task(load_config(None, ["task.name=verifiers", *overrides]).task)


@pytest.fixture()
def letters(monkeypatch):
    return _task(
        monkeypatch,
        "task.taskset=examples.verifiers_letters:LetterTaskset",
        "task.taskset_args={num_tasks: 20}",
        "task.em_from=correct",
        "task.max_turns=3",
    )


def test_tasks_become_rows_split_by_key_and_shuffled_by_seed(letters) -> None:
    train, heldout = letters.rows("train", 100), letters.rows("heldout", 100)
    assert (len(train), len(heldout)) == (16, 4)  # 20 tasks, 0.2 held out
    assert {r["id"] for r in train} | {r["id"] for r in heldout} == set(range(20))  # each task's idx, once
    assert letters.rows("train", 3, seed=1) == letters.rows("train", 3, seed=1) != letters.rows("train", 3)
    row = heldout[0]
    assert row["question"].startswith("How many '") and row["answer"] == letters.tasks[row["id"]].data.answer
    with pytest.raises(ArlkitError, match="no split 'sft'; valid: train, heldout"):
        letters.rows("sft", 1)


def test_an_episode_with_tools_scores_each_reward_function_as_a_component(letters) -> None:
    row = letters.rows("train", 1)[0]
    word, letter = row["question"].split("'")[3], row["question"].split("'")[1]
    env = episode_env(letters.make_env())
    assert [t["function"]["name"] for t in env.prompt_tools] == ["count"]  # its JSON schema, for the template
    assert env.reset(row) == [{"role": "user", "content": row["question"]}]
    call = json.dumps({"name": "count", "arguments": {"word": word, "letter": letter}})
    step = env.step(f"<tool_call>{call}</tool_call>")
    assert not step.done and step.messages == ({"role": "tool", "content": row["answer"]},)
    bad = env.step('<tool_call>{"name": "count", "arguments": {"word": 3}}</tool_call>')
    assert not bad.done and "validation error" in bad.messages[0]["content"]  # an observation, not a crash
    assert env.step(row["answer"]).done
    result = env.result()
    # correct (weight 1) and short (weight 0.1) both score 1: 1.0 + 0.1
    assert result.reward == pytest.approx(1.1)
    m = result.metrics
    assert (m["reward/correct"], m["reward/short"], m["em"], m["used_tool"]) == (1.0, 1.0, 1.0, 1.0)
    assert (m["tool_calls"], m["failed_tool_calls"]) == (2.0, 1.0)  # the second call had bad arguments
    env.reset(row)  # a wrong long reply on the first turn: correct 0, short 0
    assert env.step("I think it is seven.").done and env.result().reward == 0.0


def test_a_single_turn_taskset_from_a_function_and_a_shared_toolset(monkeypatch) -> None:
    task = _task(monkeypatch, f"task.taskset={HERE}:echo_tasks", "task.taskset_args={n: 10}")
    env = episode_env(task.make_env())
    assert env.prompt_tools is None
    messages = env.reset({"id": 3})
    assert messages == [{"role": "system", "content": "Echo."}, {"role": "user", "content": "Say 3."}]
    assert env.step('<tool_call>{"name": "x", "arguments": {}}</tool_call> 3').done  # no tools: one turn
    result = env.result()
    # exact 0, long 1 at weight -0.5: the reward is -0.5; em without em_from: reward > 0
    assert result.reward == -0.5 and result.metrics["em"] == 0.0 and result.metrics["turns"] == 1.0

    plugged = f"task.taskset_args={{task: {{rewards: {{said_noon: {{fn: '{HERE}:said_noon', weight: 2}}}}}}}}"
    clock = _task(monkeypatch, f"task.taskset={HERE}:ClockTaskset", "task.heldout_fraction=0.5", plugged)
    env = episode_env(clock.make_env())
    env.reset({"id": 0})
    step = env.step('<tool_call>{"name": "clock_now", "arguments": {}}</tool_call>')
    assert step.messages == ({"role": "tool", "content": "noon"},)
    assert env.step("noon").done
    result = env.result()
    # exact 1 (weight 1), long 0, said_noon 1 at weight 2: 1 + 2
    assert result.reward == 3.0 and result.metrics["reward/said_noon"] == 1.0


def test_a_reward_that_raises_ends_the_episode_as_an_env_error(monkeypatch, tiny) -> None:
    task = _task(monkeypatch, f"task.taskset={HERE}:raising_tasks")
    env = task.make_env()
    env.reset({"id": 0})
    with pytest.raises(VerifiersScoringError, match="the rubric broke"):
        env.step("0")
    # through the rollout engine: the episode ends, marked, and the run goes on
    ep = Episode(task.make_env(), tiny.tokenizer, {"id": 1}, 0, RolloutParams(max_turns=2))
    ep.advance(tiny.tokenizer.encode("1", add_special_tokens=False))
    assert ep.done and ep.traj.metadata["finish_reason"] == "env_error"
    assert "the rubric broke" in ep.traj.metadata["env_error"]


@pytest.mark.parametrize("spec", [HERE, f"{HERE}:clock_env", f"{HERE}:ClockTaskset"])
def test_a_taskset_id_an_env_and_a_class_load_the_same_tasks(monkeypatch, spec) -> None:
    task = _task(monkeypatch, f"task.taskset={spec}", "task.heldout_fraction=0.5")
    assert sorted(r["question"] for s in ("train", "heldout") for r in task.rows(s, 5)) == [
        "Say dawn.",
        "Say noon.",
    ]
    assert [t["function"]["name"] for t in task.prompt_tools] == ["clock_now"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["task.taskset=no_such_module:X"], r"task\.taskset.*'no_such_module' does not import"),
        ([f"task.taskset={HERE}:Nothing"], rf"task\.taskset.*{HERE}.* has no attribute 'Nothing'"),
        ([f"task.taskset={HERE}:HERE"], r"task\.taskset.*gave str, not a verifiers Taskset"),
        (
            [f"task.taskset={HERE}:ClockTaskset", "task.taskset_args={sise: 3}"],
            "unknown config field 'task.taskset_args.sise'",
        ),
        ([f"task.taskset={HERE}:Endless"], r"task\.max_tasks.*Endless is infinite"),
        (
            [f"task.taskset={HERE}:runtime_tasks"],
            r"task RuntimeTask cannot run.*in_box need a verifiers Runtime",
        ),
        (["task.taskset=no_such_taskset"], r"task\.taskset.*cannot load 'no_such_taskset'"),
    ],
    ids=["module", "attribute", "not_a_taskset", "taskset_args", "infinite", "runtime", "taskset_id"],
)
def test_bad_configs_fail_at_start_naming_the_field(monkeypatch, overrides, message) -> None:
    with pytest.raises(ArlkitError, match=message):
        _task(monkeypatch, *overrides)


def test_an_infinite_taskset_takes_max_tasks_and_em_from_must_name_a_reward(monkeypatch) -> None:
    task = _task(monkeypatch, f"task.taskset={HERE}:Endless", "task.max_tasks=5", "task.em_from=exactt")
    assert len(task.rows("train", 10)) + len(task.rows("heldout", 10)) == 5
    env = task.make_env()
    env.reset({"id": 0})
    with pytest.raises(
        ArlkitError, match=r"task\.em_from.*'exactt' is none of the task's rewards \(exact, long\)"
    ):
        env.step("0")


def test_the_verifiers_example_trains_by_the_command_line(tiny, tmp_path) -> None:
    run = train_example("examples/verifiers_letters.yaml", tiny.sft_dir, tmp_path)
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    step = next(m for m in logged if "rollout/reward" in m)
    assert {"rollout/reward/correct", "rollout/reward/short", "rollout/env/used_tool"} <= set(step)
