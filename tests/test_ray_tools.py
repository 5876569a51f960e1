"""Tool calls in Ray actors (tools/ray_pool.py): the same rollouts and update as in process; a raising or
hanging actor gives an error observation within the timeout, and the pool goes on."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_run_overrides
from rich.console import Console

from arlkit.config import load_config
from arlkit.envs.tool_env import ToolEnv
from arlkit.tasks.remote import RayToolsTask
from arlkit.tools.base import tool
from arlkit.train.loop import train_step
from arlkit.train.setup import setup

ray = pytest.importorskip("ray", reason="the Ray tests need the `ray` extra: pip install 'arlkit[ray]'")
from arlkit.tools.ray_pool import ToolPool  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    # the actors cannot import this test module: send its tool factory by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


def _step(overrides: list[str]) -> tuple[dict, list[dict], object]:
    s = setup(load_config(None, overrides), Console(quiet=True))
    metrics = train_step(s, 1)
    rows = [json.loads(line) for line in (s.run.path / "samples.jsonl").read_text().splitlines()]
    return metrics, rows, s.task


def test_training_step_with_tools_in_actors_matches_in_process(tiny, tmp_path: Path, local_ray) -> None:
    common = ("rollout.prompts_per_step=3", "train.n_samples=12")
    local, local_rows, _ = _step(tiny_run_overrides(tiny.sft_dir, tmp_path / "local", *common))
    ray_ov = ("ray.enabled=true", "ray.num_tool_actors=2", "ray.actor_cpus=0.5")
    remote, remote_rows, task = _step(tiny_run_overrides(tiny.sft_dir, tmp_path / "ray", *common, *ray_ov))
    assert isinstance(task, RayToolsTask)
    assert sum(r["metadata"]["metrics"]["n_calls"] for r in remote_rows) > 0  # the actors served calls
    assert task.pool.replaced == 0
    for a, b in zip(local_rows, remote_rows, strict=True):
        assert a["token_ids"] == b["token_ids"]  # the same observations came back, token for token
        assert a["reward"] == b["reward"] and a["metadata"]["metrics"] == b["metadata"]["metrics"]
    same = [k for k in local if not k.startswith(("timing_s/", "perf/"))]
    assert {k: local[k] for k in same} == pytest.approx({k: remote[k] for k in same}, nan_ok=True)
    task.pool.shutdown()


def _factory():
    @tool
    def echo(text: str) -> str:
        """Repeat the text."""
        return f"echo: {text}"

    @tool
    def boom(text: str) -> str:
        """Always fails."""
        raise ValueError(f"bad input {text}")

    @tool
    def sleepy(text: str) -> str:
        """Hangs."""
        time.sleep(60)
        return "never"

    @tool
    def slow(text: str) -> str:
        """Takes a while."""
        time.sleep(0.5)
        return f"slow: {text}"

    return [echo, boom, sleepy, slow]


class _Scorer:
    def prompt(self, row: dict) -> str:
        return row["question"]

    def score(self, answer: str | None, row: dict) -> dict[str, float]:
        return {"em": 0.0, "f1": 0.0}


def _call(name: str) -> str:
    return f'<tool_call>{{"name": "{name}", "arguments": {{"text": "x"}}}}</tool_call>'


def test_raising_and_hanging_actors_become_error_observations(local_ray) -> None:
    pool = ToolPool(_factory, num_actors=2, timeout_s=2.0, num_cpus=0.5)
    in_process = ToolEnv(_factory(), _Scorer(), fmt="hermes", max_turns=8)
    remote = ToolEnv(pool.tools(), _Scorer(), fmt="hermes", max_turns=8)
    for env in (in_process, remote):
        env.reset({"question": "q"})
    action = _call("echo") + _call("boom")
    local_obs = in_process.step(action).observations
    remote_obs = remote.step(action).observations
    assert remote_obs == local_obs  # the raising tool reads the same as in process
    assert remote_obs[1]["content"] == "Error: tool 'boom' failed: ValueError: bad input x"

    start = time.perf_counter()
    hung = remote.step(_call("sleepy"))
    waited = time.perf_counter() - start
    assert hung.observations[0]["content"].startswith("Error: tool 'sleepy' failed: ToolTimeout: no result")
    assert not hung.calls[0].ok
    assert waited < 2.0 + 3.0  # the pool's timeout plus slack, far below the tool's 60 s
    assert pool.replaced == 1  # the hung actor was killed and replaced
    # the pool still serves calls (the killed actor's slot holds a fresh actor)
    after = [remote.step(_call("echo")).observations[0]["content"] for _ in range(2)]
    assert after == ["echo: x", "echo: x"]
    pool.shutdown()


def test_back_pressure_caps_calls_per_actor(local_ray) -> None:
    """2 actors × 1 in flight: of 4 concurrent half-second calls, 2 run and 2 wait for a free slot."""
    import threading

    pool = ToolPool(_factory, num_actors=2, timeout_s=30.0, num_cpus=0.5)
    seen: list[int] = []
    real_acquire = pool._acquire

    def acquire() -> int:
        i = real_acquire()
        seen.append(sum(pool._busy))
        return i

    pool._acquire = acquire
    outs: list[str] = []
    threads = [
        threading.Thread(target=lambda: outs.append(pool.call("slow", {"text": "y"}))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [o.text for o in outs] == ["slow: y"] * 4
    assert max(seen) == 2  # busy slots right after each submission: the cap was reached, never passed
    pool.shutdown()
