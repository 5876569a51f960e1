"""Guards: a non-finite loss or gradient skips the update and is counted; `train.max_bad_steps` bad steps in a
row stop the run with a checkpoint of the last good weights; an env that raises loses its episode, not the run."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_run_overrides
from rich.console import Console
from transformers import AutoModelForCausalLM

import arlkit.train.update as update_mod
from arlkit.config import load_config
from arlkit.envs.tool_env import ToolEnv
from arlkit.errors import ArlkitError
from arlkit.train.checkpoint import STATE_FILE
from arlkit.train.guards import TrainState, observe_step
from arlkit.train.loop import collect, setup, train, train_step


def _cfg(tiny, tmp_path, *extra: str):
    return load_config(None, tiny_run_overrides(tiny.sft_dir, tmp_path / "run", "task.n_eval=0", *extra))


class _InfGrad(torch.autograd.Function):
    """Identity forward, infinite gradient backward: a finite loss whose gradients are not finite."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * math.inf


def _poisoned(kind: str):
    real = update_mod._actor_loss

    def actor_loss(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        if kind == "nan_loss":  # a NaN that carries no gradient: only the loss check can see it
            loss = loss + torch.tensor(math.nan)
            stats = {**stats, "pg_loss": float(loss.detach())}
        else:
            loss = _InfGrad.apply(loss)
        return loss, stats

    return actor_loss


@pytest.mark.parametrize("kind", ["nan_loss", "inf_grad"])
def test_non_finite_loss_or_gradient_skips_the_update(tiny, tmp_path, monkeypatch, kind) -> None:
    s = setup(_cfg(tiny, tmp_path), Console(quiet=True))
    before = {k: v.detach().clone() for k, v in s.policy.model.named_parameters()}
    with monkeypatch.context() as m:
        m.setattr(update_mod, "_actor_loss", _poisoned(kind))
        bad = train_step(s, 1)
    # 1 epoch × 1 mini-batch: one optimiser step, skipped
    assert bad["actor/skipped_updates"] == 1.0
    assert all(torch.equal(v, before[k]) for k, v in s.policy.model.named_parameters())
    assert s.opts.actor.state == {}  # AdamW never stepped: no moments were created
    assert all(p.grad is None for p in s.policy.model.parameters())  # the poisoned gradients were dropped
    good = train_step(s, 2)
    assert "actor/skipped_updates" not in good and math.isfinite(good["actor/grad_norm"])
    assert len(s.opts.actor.state) > 0  # the next finite step did update


def test_observe_step_counts_consecutive_bad_steps() -> None:
    state = TrainState()
    seen = [
        observe_step(state, m)
        for m in (
            {"actor/skipped_updates": 1.0},  # bad
            {"actor/skipped_updates": 2.0, "critic/skipped_updates": 1.0},  # bad: 3 skipped optimiser steps
            {},  # good: the run of bad steps ends
            {"critic/skipped_updates": 1.0},  # bad
        )
    ]
    assert [x["guard/consecutive_bad_steps"] for x in seen] == [1.0, 2.0, 0.0, 1.0]
    assert [x["guard/skipped_updates"] for x in seen] == [1.0, 3.0, 0.0, 1.0]
    assert [x["guard/skipped_updates_total"] for x in seen] == [1.0, 4.0, 4.0, 5.0]  # 1, 1+3, 4, 4+1


def test_max_bad_steps_stops_the_run_with_the_last_good_weights(tiny, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(update_mod, "_actor_loss", _poisoned("nan_loss"))
    cfg = _cfg(tiny, tmp_path, "train.steps=5", "train.max_bad_steps=2")
    with pytest.raises(ArlkitError, match=r"stopped at step 2: 2 steps in a row .*train\.max_bad_steps=2"):
        train(cfg, Console(quiet=True))
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "step_2"
    assert (ckpt / STATE_FILE).is_file()  # resumable (e.g. with a lower algo.lr)
    start = AutoModelForCausalLM.from_pretrained(tiny.sft_dir).state_dict()
    saved = AutoModelForCausalLM.from_pretrained(ckpt).state_dict()
    assert all(torch.equal(start[k], saved[k]) for k in start)  # every update was skipped
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # no step after the stop
    assert [r["guard/consecutive_bad_steps"] for r in rows] == [1.0, 2.0]


def _crash_rows(monkeypatch, ids: set) -> None:
    real = ToolEnv.step

    def step(self, action: str):
        if self._row["id"] in ids:
            raise ZeroDivisionError("a bug in the env")
        return real(self, action)

    monkeypatch.setattr(ToolEnv, "step", step)


def test_a_raising_env_marks_its_episodes_and_the_update_leaves_them_out(tiny, tmp_path, monkeypatch) -> None:
    s = setup(_cfg(tiny, tmp_path), Console(quiet=True))
    first = s.train_rows[0]["id"]  # group 0 of step 1 (cursor 0); 2 prompts × 4 rollouts per step
    _crash_rows(monkeypatch, {first})
    got = collect(s)
    crashed = [t for t in got.trajectories if "env_error" in t.metadata]
    assert {t.group_id for t in crashed} == {0} and len(crashed) == 4
    for t in crashed:
        assert t.metadata["env_error"] == "ZeroDivisionError: a bug in the env"
        assert t.metadata["finish_reason"] == "env_error" and t.reward == 0.0

    s.cursor = 0  # the same prompts again, through the whole step
    trained = []
    import arlkit.train.loop as loop

    real_collate = loop.collate
    monkeypatch.setattr(loop, "collate", lambda trajs, pad: trained.extend(trajs) or real_collate(trajs, pad))
    metrics = train_step(s, 1)
    assert metrics["env/errors"] == 4.0 and metrics["env/error_rate"] == 0.5  # 4 of 8 episodes
    assert len(trained) == 4 and {t.group_id for t in trained} == {1}  # only group 1 reached the update
    assert math.isfinite(metrics["actor/pg_loss"])


def test_every_env_raising_is_not_fatal(tiny, tmp_path, monkeypatch) -> None:
    s = setup(_cfg(tiny, tmp_path), Console(quiet=True))
    _crash_rows(monkeypatch, {r["id"] for r in s.train_rows})
    metrics = train_step(s, 1)
    assert metrics["env/errors"] == 8.0 and metrics["env/error_rate"] == 1.0
    assert metrics["actor/skipped_step"] == 1.0  # nothing to learn from, the run goes on
