"""`arlkit sft`: expert demonstrations of the RL split, a fine-tuned checkpoint that reloads, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import tiny_run_overrides
from rich.console import Console
from transformers import AutoModelForCausalLM

from arlkit.config import load_config
from arlkit.errors import ArlkitError
from arlkit.train.setup import setup
from arlkit.train.sft_run import demonstrations, run_sft
from arlkit.trajectory import Role


def _overrides(tiny, run_dir, *extra: str) -> list[str]:
    sft = ["sft.n_demos=4", "sft.batch_size=4", "sft.steps=8", "sft.lr=1e-2", "sft.warmup=0", "task.n_eval=2"]
    return tiny_run_overrides(tiny.model_dir, run_dir, *sft, *extra)


def test_demonstrations_are_gold_experts_on_the_rl_split(tiny, tmp_path) -> None:
    s = setup(load_config(None, _overrides(tiny, tmp_path / "run")), Console(quiet=True))
    demos = demonstrations(s)
    rows = tiny.task.rows("rl", 4, seed=s.cfg.train.seed + 2000)  # the RL split, the demonstrations' seed
    assert len(demos) == 4
    for d, row in zip(demos, rows, strict=True):
        assert d.metadata["question"] == row["question"] and d.metadata["strategy"] == "all_hops"
        # all_hops: one search per hop, each ran, then the gold answer (EM 1)
        m = d.metadata["metrics"]
        assert m["n_calls"] == len(row["hops"]) and m["n_failed_calls"] == 0.0 and m["em"] == 1.0
        assert Role.ACTION in d.roles
    with pytest.raises(ArlkitError, match=r"sft\.strategy 'oracle'"):
        demonstrations(
            setup(
                load_config(None, _overrides(tiny, tmp_path / "r2", "sft.strategy=oracle")),
                Console(quiet=True),
            )
        )


def test_sft_run_trains_saves_and_evaluates(tiny, tmp_path) -> None:
    run_dir = tmp_path / "run"
    summary = run_sft(load_config(None, _overrides(tiny, run_dir)), Console(quiet=True))
    assert (
        summary["steps"] == 8
        and summary["n_demos"] == 4
        and summary["base"]["n"] == summary["final"]["n"] == 2
    )
    losses = [
        r["sft/loss"]
        for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
        if "sft/loss" in r
    ]
    assert len(losses) == 8 and losses[-1] < losses[0]  # the same 4 demonstrations every step: the loss falls
    final = run_dir / "checkpoints" / "final"
    before = AutoModelForCausalLM.from_pretrained(tiny.model_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(final).state_dict()
    assert all(
        not torch.equal(before[k], after[k]) for k in before if k.endswith("weight") and "norm" not in k
    )
    for name in ("curves.png", "summary.json", "eval_base.jsonl", "eval_final.jsonl", "config.yaml"):
        assert (run_dir / name).is_file(), name


def test_sft_refuses_a_routed_policy(tiny, tmp_path) -> None:
    cfg = load_config(None, _overrides(tiny, tmp_path, "model.routing.kind=dart"))
    with pytest.raises(ArlkitError, match=r"model\.routing"):
        run_sft(cfg, Console(quiet=True))


def test_sft_cli(tiny, tmp_path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("sft:\n  steps: 2\n")
    overrides = [
        o
        for o in _overrides(tiny, tmp_path / "run", "task.n_eval=0", "sft.n_demos=2")
        if not o.startswith("sft.steps")
    ]
    cmd = [sys.executable, "-m", "arlkit", "sft", str(config), *overrides]
    out = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["n_demos"] == 2  # the file's steps, the override's n_demos
    assert (tmp_path / "run" / "checkpoints" / "final" / "config.json").is_file()
