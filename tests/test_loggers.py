"""Weights & Biases logging (optional): a fake `wandb` module records the calls a real one would get."""

from __future__ import annotations

import sys
import types

import pytest
from conftest import tiny_run_overrides
from rich.console import Console

from arlkit.config import load_config
from arlkit.errors import ArlkitError
from arlkit.train.loggers import WANDB_ID_FILE
from arlkit.train.loop import train


class _FakeRun:
    def __init__(self, calls: list, kwargs: dict):
        self.calls, self.kwargs = calls, kwargs

    def log(self, metrics: dict, step: int) -> None:
        self.calls.append(("log", step, dict(metrics)))

    def finish(self) -> None:
        self.calls.append(("finish",))


def _fake_wandb(calls: list) -> types.ModuleType:
    mod = types.ModuleType("wandb")
    mod.util = types.SimpleNamespace(generate_id=lambda: "run0042")

    def init(**kwargs):
        calls.append(("init", kwargs))
        return _FakeRun(calls, kwargs)

    mod.init = init
    return mod


def _cfg(tiny, tmp_path, *extra: str):
    return load_config(None, tiny_run_overrides(tiny.sft_dir, tmp_path / "run", "task.n_eval=2", *extra))


def test_wandb_gets_every_logged_row(tiny, tmp_path, monkeypatch) -> None:
    calls: list = []
    monkeypatch.setitem(sys.modules, "wandb", _fake_wandb(calls))
    train(_cfg(tiny, tmp_path, "train.wandb=true", "train.wandb_project=toy"), Console(quiet=True))
    run = tmp_path / "run"
    init = calls[0]
    assert init[0] == "init"
    assert init[1]["project"] == "toy" and init[1]["id"] == "run0042" and init[1]["resume"] == "allow"
    assert init[1]["name"] == "run" and init[1]["config"]["train"]["steps"] == 2
    assert (run / WANDB_ID_FILE).read_text() == "run0042"  # a resumed run continues the same W&B run
    logs = [c for c in calls if c[0] == "log"]
    # what metrics.jsonl holds, row by row: base eval (step 0), steps 1 and 2, final eval (step 2)
    assert [c[1] for c in logs] == [0, 1, 2, 2]
    assert (
        "eval/em" in logs[0][2] and "rollout/reward" in logs[1][2] and "guard/skipped_updates" in logs[2][2]
    )
    assert all(v is not None for c in logs for v in c[2].values())  # NaN metrics are left out, not sent
    assert calls[-1] == ("finish",)


def test_wandb_enabled_but_not_installed_says_how_to_install(tiny, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` raise ImportError
    with pytest.raises(
        ArlkitError, match=r"train\.wandb is true but wandb is not installed: pip install 'arlkit\[wandb\]'"
    ):
        train(_cfg(tiny, tmp_path, "train.wandb=true"), Console(quiet=True))
