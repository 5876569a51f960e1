"""Exact resume: `arlkit train` killed with SIGKILL inside a step, resumed with --resume, logs the same metrics
as a run that was never interrupted; checkpoints are atomic and rotated."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_run_overrides
from rich.console import Console

from arlkit.config import load_config
from arlkit.errors import ArlkitError
from arlkit.train.checkpoint import (
    STATE_FILE,
    clean_partial,
    config_changes,
    latest_checkpoint,
    resume_run,
    rotate,
    save_checkpoint,
)
from arlkit.train.guards import TrainState
from arlkit.train.loop import setup, train, train_step

STEPS = 4
KILL_IN_STEP = 3

# Runs the real CLI in a subprocess; the update of step KILL_IN_STEP runs (the weights in memory move), then the
# process marks a flag file and sleeps, so the test kills it inside that step, before its log and checkpoint.
_HOOKED_CLI = """
import sys, time
from pathlib import Path
import arlkit.train.loop as loop
calls, real = [], loop.update
def update(*args, **kwargs):
    out = real(*args, **kwargs)
    calls.append(1)
    if len(calls) == {kill_in}:
        Path({flag!r}).write_text("in step")
        time.sleep(600)
    return out
loop.update = update
from arlkit.cli import app
sys.argv = ["arlkit", *{argv!r}]
app()
"""


def _config(tiny, tmp_path: Path, run_dir: Path) -> Path:
    extra = [
        f"train.steps={STEPS}",
        "train.save_every=1",
        "train.keep_checkpoints=2",
        "train.threads=1",
        "train.seed=3",
        "train.n_samples=2",
        "task.n_eval=2",
    ]
    cfg = load_config(None, tiny_run_overrides(tiny.sft_dir, run_dir, *extra))
    path = tmp_path / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "ARLKIT_CACHE": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
        "NO_COLOR": "1",
        "COLUMNS": "300",
    }


def _train(config: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "arlkit", "train", str(config), *args]
    return subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=300)


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _comparable(records: list[dict]) -> list[dict]:
    """The records without wall-clock figures (timings and throughputs differ run to run by nature)."""
    return [{k: v for k, v in r.items() if not k.startswith(("timing_s/", "perf/"))} for r in records]


def _kill_inside_step(config: Path, tmp_path: Path) -> None:
    flag = tmp_path / "inside_step"
    code = _HOOKED_CLI.format(kill_in=KILL_IN_STEP, flag=str(flag), argv=["train", str(config)])
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 240
    while not flag.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before step {KILL_IN_STEP}: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the run did not reach the hook in time")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()


def test_sigkill_inside_a_step_then_resume_gives_the_uninterrupted_metrics(tiny, tmp_path) -> None:
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    ref = _train(_config(tiny, tmp_path, ref_dir), tmp_path)
    assert ref.returncode == 0, ref.stdout + ref.stderr

    cut_cfg = _config(tiny, tmp_path, cut_dir)
    _kill_inside_step(cut_cfg, tmp_path)
    ckpts = cut_dir / "checkpoints"
    # killed inside step 3: step 2 is the newest checkpoint, rotation kept steps 1 and 2, nothing is half-written
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_1", "step_2"]
    assert (ckpts / "step_2" / STATE_FILE).is_file()
    assert [r["step"] for r in _records(cut_dir)] == [0, 1, 2]  # base eval, steps 1 and 2

    res = _train(cut_cfg, tmp_path, "--resume")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "resumed from" in res.stdout and "step_2" in res.stdout

    # The whole log (base eval, steps 1-4, final eval) equals the uninterrupted run's: steps 1-2 were kept as
    # written, step 3's lost half was recomputed from the step-2 state, so no row is duplicated or missing.
    want, got = _comparable(_records(ref_dir)), _comparable(_records(cut_dir))
    assert [r["step"] for r in got] == [0, 1, 2, 3, 4, 4]
    assert got == want
    summary = lambda d: json.loads((d / "summary.json").read_text())  # noqa: E731
    assert summary(cut_dir)["final"] == summary(ref_dir)["final"]
    assert summary(cut_dir)["base"] == summary(ref_dir)["base"]
    assert summary(cut_dir)["sampled_tokens"] == summary(ref_dir)["sampled_tokens"]  # counted across the kill
    # samples.jsonl (sampled trajectories, token ids included) also continue without duplicates
    ref_samples = (ref_dir / "samples.jsonl").read_text().splitlines()
    assert (cut_dir / "samples.jsonl").read_text().splitlines() == ref_samples
    assert sorted(p.name for p in ckpts.iterdir()) == ["final", "step_3", "step_4"]


def _setup(tiny, run_dir: Path, *extra: str):
    cfg = load_config(None, tiny_run_overrides(tiny.sft_dir, run_dir, "task.n_eval=0", *extra))
    return setup(cfg, Console(quiet=True))


def test_checkpoints_rotate_and_a_killed_save_leaves_the_previous_one(tiny, tmp_path) -> None:
    s = _setup(tiny, tmp_path / "run", "train.keep_checkpoints=2")
    ckpts = s.run.path / "checkpoints"
    for step in (1, 2, 3):
        save_checkpoint(s, f"step_{step}", TrainState(step=step))
    assert [p.name for p in rotate(ckpts, 2)] == ["step_1"]  # keep 2: the oldest of 3 goes
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_2", "step_3"]
    # a save killed before its rename leaves a hidden temporary folder: ignored, then cleaned
    (ckpts / ".tmp-step_4-999").mkdir()
    (ckpts / ".tmp-step_4-999" / "model.safetensors").write_bytes(b"half")
    assert latest_checkpoint(ckpts) == ckpts / "step_3"
    # killed between its two renames while replacing step_3: the old folder is put back
    os.replace(ckpts / "step_3", ckpts / ".old-step_3-999")
    clean_partial(ckpts)
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_2", "step_3"]
    assert latest_checkpoint(ckpts) == ckpts / "step_3"


def test_resume_without_a_checkpoint_or_of_a_finished_run_says_so(tiny, tmp_path) -> None:
    cfg = load_config(None, tiny_run_overrides(tiny.sft_dir, tmp_path / "run", "task.n_eval=0"))
    with pytest.raises(ArlkitError, match=r"no complete checkpoint .*train\.save_every"):
        train(cfg, Console(quiet=True), resume=True)
    train(cfg, Console(quiet=True))  # 2 steps, then checkpoints/final
    with pytest.raises(ArlkitError, match=r"finished \(summary\.json, 2 steps\); raise train\.steps"):
        train(cfg, Console(quiet=True), resume=True)


def test_config_changes_name_the_dotted_fields() -> None:
    saved = {"algo": {"lr": 1e-5, "epochs": 1}, "train": {"steps": 4}}
    now = {"algo": {"lr": 2e-5, "epochs": 1}, "train": {"steps": 4, "wandb": True}}
    assert config_changes(saved, now) == ["algo.lr", "train.wandb"]


@pytest.mark.parametrize(
    "extra",
    [
        ("model.lora.rank=4", "algo.advantage=gae", "critic.kind=value_head"),  # adapters + value head
        ("algo.mini_batches=2", "algo.epochs=2"),  # shuffled mini-batches draw on the Setup's generator
    ],
    ids=["lora_value_head", "full_minibatches"],
)
def test_resume_in_process_continues_exactly(tiny, tmp_path, extra) -> None:
    """Step 2 after restoring the step-1 checkpoint into a fresh Setup equals step 2 of the run that wrote it."""
    s = _setup(tiny, tmp_path / "run", *extra)
    train_step(s, 1)
    save_checkpoint(s, "step_1", TrainState(step=1))
    want = train_step(s, 2)
    weights = {k: v.detach().clone() for k, v in s.policy.model.named_parameters()}

    fresh = _setup(tiny, tmp_path / "run", *extra)
    state = resume_run(fresh, Console(quiet=True))
    assert state == TrainState(step=1) and fresh.cursor == 2  # 2 prompts per step
    got = train_step(fresh, 2)
    assert _comparable([got]) == _comparable([want])
    assert all(torch.equal(v, weights[k]) for k, v in fresh.policy.model.named_parameters())
    if fresh.policy.value_head is not None:
        assert all(
            torch.equal(a, b)
            for a, b in zip(
                fresh.policy.value_head.parameters(), s.policy.value_head.parameters(), strict=True
            )
        )
