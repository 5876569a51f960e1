"""Asynchronous rollouts with bounded staleness (issue 22): the staleness arithmetic by hand, the producer and
its buffer on the real engine and fixture model, a producer that crashes, stale batches dropped, the loop with
max_staleness 1 (and --resume), and max_staleness 0 as the synchronous loop."""

from __future__ import annotations

import json
import math
import threading
import time

import pytest
import torch
from conftest import tiny_run_overrides
from rich.console import Console

from arlkit.config import load_config
from arlkit.errors import ArlkitError
from arlkit.models.precision import merged_state_dict
from arlkit.rollout.staleness import fresh, lag, oldest_version, staleness_metrics
from arlkit.rollout.version_gate import VersionGate
from arlkit.train.async_rollouts import check_supported, start_rollouts
from arlkit.train.loop import train, train_step
from arlkit.train.setup import setup

QUIET = Console(quiet=True)


def _cfg(tiny, tmp_path, *extra: str):
    return load_config(None, tiny_run_overrides(tiny.sft_dir, tmp_path / "run", "task.n_eval=0", *extra))


# --- the arithmetic (rollout/staleness.py) ---


def test_lag_counts_updates_between_sampling_and_training_weights():
    # step 1 trains the initial weights (version 0): lag 0; step 5 trains version 4, so version 2 is 2 old
    assert lag(1, 0) == 0
    assert lag(5, 2) == 2
    assert lag(5, 4) == 0


def test_oldest_version_is_the_producer_gate():
    # max_staleness 1: step 5 may train version 3 (5 − 1 − 1); never below version 0
    assert oldest_version(5, 1) == 3
    assert oldest_version(5, 0) == 4  # synchronous: the weights the step trains
    assert oldest_version(2, 3) == 0


def test_groups_older_than_the_bound_are_not_fresh():
    # step 6 trains version 5: versions 5, 4, 3, 2 are 0, 1, 2, 3 old; bound 2 keeps the first three
    assert fresh(6, [5, 4, 3, 2], max_staleness=2) == [True, True, True, False]
    assert fresh(6, [5, 4], max_staleness=0) == [True, False]


def test_staleness_metrics_histogram_mean_max():
    # lags 0, 1, 1, 2 with bound 2: histogram {0: 1, 1: 2, 2: 1}; mean 4/4 = 1; max 2
    m = staleness_metrics([0, 1, 1, 2], max_staleness=2)
    assert m == {
        "async/staleness_0": 1.0,
        "async/staleness_1": 2.0,
        "async/staleness_2": 1.0,
        "async/staleness_mean": 1.0,
        "async/staleness_max": 2.0,
    }
    # every bin up to the bound is logged, even empty; no groups: zeros
    assert staleness_metrics([], max_staleness=1) == {
        "async/staleness_0": 0.0,
        "async/staleness_1": 0.0,
        "async/staleness_mean": 0.0,
        "async/staleness_max": 0.0,
    }


# --- configuration ---


def test_stale_samples_turn_on_tis_and_unsupported_settings_fail(tiny, tmp_path):
    assert _cfg(tiny, tmp_path).algo.rollout_correction == "none"  # fp32 engine, synchronous
    assert _cfg(tiny, tmp_path, "rollout.max_staleness=1").algo.rollout_correction == "tis"
    check_supported(_cfg(tiny, tmp_path, "rollout.max_staleness=1"), world_size=1)
    for extra in (
        "branching.mode=arpo",
        "algo.dynamic_sampling=true",
        "rollout.agent=examples.openai_agent:run",
    ):
        with pytest.raises(ArlkitError, match=r"rollout\.max_staleness 1 needs"):
            check_supported(_cfg(tiny, tmp_path, "rollout.max_staleness=1", extra), world_size=1)
    with pytest.raises(ArlkitError, match=r"partial_rollouts needs rollout\.backend vllm"):
        check_supported(_cfg(tiny, tmp_path, "rollout.max_staleness=1", "rollout.partial_rollouts=true"), 1)
    with pytest.raises(ArlkitError, match=r"partial_rollouts needs rollout\.max_staleness"):
        setup(_cfg(tiny, tmp_path, "rollout.partial_rollouts=true", "rollout.backend=vllm"), QUIET)
    with pytest.raises(ArlkitError, match="one process"):
        check_supported(_cfg(tiny, tmp_path, "rollout.max_staleness=1"), world_size=2)
    with pytest.raises(ArlkitError, match=r"branching\.mode none"):  # at setup, before the model loads
        setup(_cfg(tiny, tmp_path, "rollout.max_staleness=1", "branching.mode=arpo"), QUIET)


# --- the version gate of a shared server (rollout/version_gate.py) ---


def _started(target) -> threading.Thread:
    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t


def test_a_sync_waits_for_generation_and_keeps_new_generation_out():
    gate, log = VersionGate(4), []
    reading, release = threading.Event(), threading.Event()

    def generate():
        with gate.read() as v:
            log.append(("read", v))
            reading.set()
            release.wait(5)
        log.append(("read done", v))

    def sync():
        with gate.write(5):
            log.append(("write", gate.version))
        log.append(("written", gate.version))

    def late_generate():
        with gate.read() as v:
            log.append(("late read", v))

    first = _started(generate)
    assert reading.wait(5)
    writer = _started(sync)
    time.sleep(0.2)  # the sync waits for the read in flight
    late = _started(late_generate)
    time.sleep(0.2)  # and a read that comes after it waits for the sync (writers first: no starvation)
    assert log == [("read", 4)]
    release.set()
    for t in (first, writer, late):
        t.join(5)
    assert log == [("read", 4), ("read done", 4), ("write", 4), ("written", 5), ("late read", 5)]


def test_a_failed_sync_keeps_the_version_and_frees_the_gate():
    gate = VersionGate(2)
    with pytest.raises(RuntimeError), gate.write(3):
        raise RuntimeError("the server refused the weights")
    assert gate.version == 2
    with gate.read() as v, gate.read() as w:  # reads share the gate
        assert v == w == 2
    with gate.write():  # the same weights again: the version stays
        pass
    assert gate.version == 2


# --- the producer and its buffer on the real engine ---


class FlakyTask:
    """The fixture task whose env factory raises on its first call (`exc`), then works."""

    def __init__(self, task, exc: Exception):
        self.task, self.exc, self.calls = task, exc, 0

    def __getattr__(self, name):
        return getattr(self.task, name)

    def make_env(self):
        self.calls += 1
        if self.calls == 1:
            raise self.exc
        return self.task.make_env()


@pytest.mark.parametrize("producers", [1, 2])
def test_producer_batches_carry_their_version_and_steps_train_within_the_bound(tiny, tmp_path, producers):
    s = setup(_cfg(tiny, tmp_path, "rollout.max_staleness=1", f"rollout.producers={producers}"), QUIET)
    s.rollouts = start_rollouts(s, step=1)
    try:
        for step in (1, 2, 3):
            m = train_step(s, step)
            s.rollouts.publish(s.policy.model, step)
            assert math.isfinite(m["actor/pg_loss"])
            assert 0 <= m["async/staleness_max"] <= 1
            assert m["async/staleness_0"] + m["async/staleness_1"] == 2  # prompts_per_step groups
            assert m["async/dropped_stale"] == 0  # the gate never samples what would be dropped
            assert {"async/trainer_idle_s", "async/buffer_groups", "rollout_corr/is_weight_mean"} <= set(m)
        assert s.cursor == 6  # the trainer consumed 3 batches of 2 prompts
        taken = s.rollouts.take(4)  # step 4 trains version 3: version 2 or 3 sampled this batch
        versions = {t.metadata["policy_version"] for t in taken.trajectories}
        assert len(versions) == 1 and versions <= {2, 3}
        assert sorted(t.group_id for t in taken.trajectories) == [6] * 4 + [7] * 4  # whole groups, in order
        # the batch of step 5 samples version 3: the producer that takes it holds exactly the trained weights
        deadline = time.monotonic() + 30
        while not any(p.version == 3 for p in s.rollouts.producers) and time.monotonic() < deadline:
            time.sleep(0.05)
        held = next(p for p in s.rollouts.producers if p.version == 3).copy.model.state_dict()
        assert all(torch.equal(held[k], v) for k, v in merged_state_dict(s.policy.model).items())
    finally:
        s.rollouts.close()


@pytest.mark.parametrize("producers", [1, 2])
def test_a_crashed_producer_restarts_and_regenerates_the_lost_batch(tiny, tmp_path, producers):
    s = setup(_cfg(tiny, tmp_path, "rollout.max_staleness=1", f"rollout.producers={producers}"), QUIET)
    s.task = FlakyTask(s.task, RuntimeError("index went away"))
    s.rollouts = start_rollouts(s, step=1)
    try:
        # the first env factory call raises in batch 0's producer (or batch 1's, with two); batches 0 and 1
        # (version 0, no publish needed) come back whole, in order, with their own prompts
        first, second = s.rollouts.take(1), s.rollouts.take(2)
        restarts = first.metrics["async/producer_restarts"] + second.metrics["async/producer_restarts"]
        assert restarts == 1
        assert sorted(t.group_id for t in first.trajectories) == [0] * 4 + [1] * 4
        assert sorted(t.group_id for t in second.trajectories) == [2] * 4 + [3] * 4
        assert (first.cursor, second.cursor) == (2, 4)
    finally:
        s.rollouts.close()


def test_a_configuration_error_in_the_producer_stops_the_run(tiny, tmp_path):
    s = setup(_cfg(tiny, tmp_path, "rollout.max_staleness=1"), QUIET)
    s.task = FlakyTask(s.task, ArlkitError("task.index_path does not exist"))
    s.rollouts = start_rollouts(s, step=1)
    try:
        with pytest.raises(ArlkitError, match="index_path"):
            s.rollouts.take(1)
    finally:
        s.rollouts.close()


def test_batches_older_than_the_bound_are_dropped_and_counted(tiny, tmp_path):
    s = setup(_cfg(tiny, tmp_path, "rollout.max_staleness=1"), QUIET)
    s.rollouts = start_rollouts(s, step=1)
    r = s.rollouts
    try:
        while len(r.done) < 2:  # batches 0 and 1, both sampled by version 0 (the gate stops batch 2)
            time.sleep(0.05)
        r.publish(s.policy.model, 2)  # as if steps 1 and 2 had trained other batches
        taken = r.take(3)  # step 3 trains version 2: version 0 is 2 old > 1, twice
        assert taken.metrics["async/dropped_stale"] == 4  # 2 batches × 2 groups
        assert {t.metadata["policy_version"] for t in taken.trajectories} == {2}
        assert taken.cursor == 6  # the dropped batches were consumed: a resume does not regenerate them
    finally:
        r.close()


# --- the loop ---


def _logged(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _comparable(rows: list[dict]) -> list[dict]:
    """Logged rows without wall-clock figures."""
    return [{k: v for k, v in r.items() if not k.startswith(("timing_s/", "perf/", "time"))} for r in rows]


def test_max_staleness_0_is_the_synchronous_loop(tiny, tmp_path):
    # the default and an explicit 0 run the same code path: the same numbers, no async metrics
    # one torch thread: on a shared CPU an oversubscribed pool made this test 10x slower
    threads = torch.get_num_threads()
    try:
        train(_cfg(tiny, tmp_path / "a", "train.threads=1"), QUIET)
        train(_cfg(tiny, tmp_path / "b", "train.threads=1", "rollout.max_staleness=0"), QUIET)
    finally:
        torch.set_num_threads(threads)  # setup sets it for the whole process
    a, b = _logged(tmp_path / "a" / "run"), _logged(tmp_path / "b" / "run")
    assert _comparable(a) == _comparable(b)
    assert not any(k.startswith("async/") for r in a for k in r)


def test_async_run_resumes_from_its_checkpoint(tiny, tmp_path):
    cfg = _cfg(tiny, tmp_path, "rollout.max_staleness=1", "train.save_every=1")
    assert train(cfg, QUIET)["steps"] == 2
    summary = train(cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": 3})}), QUIET, True)
    assert summary["steps"] == 3
    rows = [r for r in _logged(tmp_path / "run") if "async/staleness_max" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["async/staleness_max"] <= 1 and math.isfinite(r["actor/pg_loss"]) for r in rows)
