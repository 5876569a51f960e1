"""Training curves: one panel per logged metric (absent ones skipped), written as a PNG naming its panels."""

from __future__ import annotations

from conftest import tiny_run_overrides
from PIL import Image
from rich.console import Console

from arlkit.config import load_config
from arlkit.eval.plots import CURVES, curve_panels, plot_curves
from arlkit.train.loop import setup, train_step


def _records() -> list[dict]:
    """Two RL steps as the loop logs them, without a KL reference, plus the final held-out evaluation."""
    step = {
        "rollout/reward": 0.1,
        "rollout/em": 0.25,
        "actor/approx_kl": 0.0,
        "actor/entropy": 5.0,
        "rollout/tool_calls": 0.5,
        "rollout/response_tokens": 20.0,
        "env/error_rate": 0.0,
        "guard/skipped_updates": 0.0,
        "actor/pg_loss": None,  # a NaN metric is logged as null
    }
    return [
        {"step": 1, **step},
        {"step": 2, **step, "guard/skipped_updates": 1.0},
        {"step": 2, "eval/em": 0.5},
    ]


def test_panels_are_the_logged_metrics_and_the_png_names_them(tmp_path) -> None:
    out = plot_curves(_records(), tmp_path / "curves.png")
    assert out == tmp_path / "curves.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    titles = [
        "train reward",
        "train EM",
        "held-out EM",
        "approx. KL(π_old ‖ π)",
        "entropy",
        "tool calls / episode",
        "response tokens / episode",
        "skipped updates",  # non-zero at step 2; the all-zero env error rate gets no panel
    ]  # no KL-to-reference panel (no actor/kl logged) and no SFT loss
    assert [t for _, t in curve_panels(_records())] == titles
    with Image.open(out) as img:
        assert img.text["Description"] == "panels: " + "; ".join(titles)
        assert img.size == (4 * 4 * 110, 2 * 3.2 * 110)  # 8 panels: 2 rows of 4, 4 × 3.2 in each at 110 dpi


def test_no_logged_metric_writes_no_png(tmp_path) -> None:
    assert plot_curves([{"step": 1, "timing_s/update": 0.1}], tmp_path / "c.png") is None
    assert not (tmp_path / "c.png").exists()


def test_every_rl_panel_is_a_metric_the_loop_logs(tiny, tmp_path) -> None:
    """Guards the panel names against renames of the loop's metrics (a renamed metric would lose its panel)."""
    cfg = load_config(
        None, tiny_run_overrides(tiny.sft_dir, tmp_path / "run", "task.n_eval=0", "algo.kl_coef=0.1")
    )
    metrics = train_step(setup(cfg, Console(quiet=True)), 1)
    rl_keys = {k for k, _ in CURVES} - {"eval/em", "sft/loss", "guard/skipped_updates"}
    assert rl_keys <= set(metrics), rl_keys - set(metrics)
