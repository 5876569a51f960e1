"""`arlkit cea` end to end on the tiny fixture models: the six models (hybrids as 2-Agent pairs), λ consistent
with the counts, gradient angles, the report; Reas/Tool/Unified training with their loss roles, reused when
finished."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from conftest import tiny_run_overrides
from rich.console import Console

from arlkit.config import load_config
from arlkit.eval.cea import MODELS
from arlkit.eval.cea_run import model_specs, role_models, run_cea


def _overrides(tiny, run_dir, *extra: str) -> list[str]:
    return [
        *tiny_run_overrides(tiny.sft_dir, run_dir),
        "cea.n=3",
        "cea.n_questions=4",
        "cea.questions_per_batch=2",
        "cea.grad_rollouts=6",
        "cea.grad_group=3",
        "train.n_samples=2",
        *extra,
    ]


def test_model_specs_pair_the_hybrids() -> None:
    specs = model_specs({"base": "B", "reas": "R", "tool": "T", "unified": "U"})
    assert list(specs) == list(MODELS)
    assert specs["unified"] == ("U", None)
    # Hybrid-Tool: Base writes reasoning, Tool writes actions; Hybrid-Reas: Reas reasons, Base acts
    assert specs["hybrid_tool"][0] == "B" and specs["hybrid_tool"][1]["action_model_path"] == "T"
    assert specs["hybrid_reas"][0] == "R" and specs["hybrid_reas"][1]["action_model_path"] == "B"
    assert specs["hybrid_tool"][1]["kind"] == "two_agent"


def test_cea_run_with_given_models(tiny, tmp_path) -> None:
    run_dir = tmp_path / "cea"
    extra = (f"cea.reas={tiny.model_dir}", f"cea.tool={tiny.sft_dir}", f"cea.unified={tiny.sft_dir}")
    res = run_cea(load_config(None, _overrides(tiny, run_dir, *extra)), Console(quiet=True))
    n, counts = res["n"], res["counts"]
    assert n == 3 and set(counts) == set(MODELS) and all(len(c) == 4 for c in counts.values())
    assert all(0 <= x <= n for c in counts.values() for x in c)
    kept = [q for q in range(4) if any(counts[m][q] for m in MODELS)]
    assert res["kept"] == kept and len(res["lambdas"]) == len(kept)

    def z(c: int) -> float:
        s = (c + 0.5) / (n + 1)
        return math.log(s / (1 - s))

    for q, lam in zip(kept, res["lambdas"], strict=True):  # λ23 = z_Uni − z_Tool − z_Reas + z_Base
        want = z(counts["unified"][q]) - z(counts["tool"][q]) - z(counts["reas"][q]) + z(counts["base"][q])
        assert lam[5] == pytest.approx(want)
        assert lam[1] == pytest.approx(z(counts["hybrid_tool"][q]) - z(counts["base"][q]))
    g = res["gradients"]
    assert g["rollouts"] == 6 and len(g["angles_deg"]["cross_role"]) == g["used"] <= 6
    assert len(g["angles_deg"]["same_action"]) == g["used"] * (g["used"] - 1) // 2
    assert all(0 <= a <= 180 for v in g["angles_deg"].values() for a in v)
    for name in ("cea.json", "report.md", "cea_rates.png", "cea_lambdas.png", "cea_grad_angles.png"):
        assert (run_dir / name).stat().st_size > 0, name
    assert json.loads((run_dir / "cea.json").read_text())["counts"] == counts
    assert "λ23" in (run_dir / "report.md").read_text()
    hybrid = yaml.safe_load((run_dir / "models/hybrid_reas/config.yaml").read_text())["model"]
    assert hybrid["path"] == str(tiny.model_dir) and hybrid["routing"]["action_model_path"] == str(
        tiny.sft_dir
    )
    again = run_cea(
        load_config(None, _overrides(tiny, run_dir, *extra, "cea.grad_rollouts=0")), Console(quiet=True)
    )
    assert again["counts"] == counts and "gradients" not in again  # counts reused from the model folders


def test_role_models_train_with_their_loss_roles_and_are_reused(tiny, tmp_path) -> None:
    run_dir = tmp_path / "cea"
    extra = ("train.steps=1", "task.n_eval=0", f"cea.reas={tiny.sft_dir}", f"cea.tool={tiny.sft_dir}")
    cfg = load_config(None, _overrides(tiny, run_dir, *extra))
    paths = role_models(cfg, str(tiny.sft_dir), run_dir, Console(quiet=True))
    assert paths["reas"] == paths["tool"] == str(tiny.sft_dir)
    assert paths["unified"] == str(run_dir / "train_unified" / "checkpoints" / "final")
    saved = yaml.safe_load((run_dir / "train_unified" / "config.yaml").read_text())
    assert saved["algo"]["loss_roles"] == ["reasoning", "action", "answer"]
    stamp = (run_dir / "train_unified" / "metrics.jsonl").stat().st_mtime_ns
    role_models(cfg, str(tiny.sft_dir), run_dir, Console(quiet=True))  # same config: reused, not retrained
    assert (run_dir / "train_unified" / "metrics.jsonl").stat().st_mtime_ns == stamp
    cfg_tool = load_config(None, _overrides(tiny, run_dir, *extra[:3], f"cea.unified={tiny.sft_dir}"))
    paths = role_models(cfg_tool, str(tiny.sft_dir), run_dir, Console(quiet=True))
    saved = yaml.safe_load((run_dir / "train_tool" / "config.yaml").read_text())
    assert saved["algo"]["loss_roles"] == ["action"] and paths["tool"].endswith(
        "train_tool/checkpoints/final"
    )
