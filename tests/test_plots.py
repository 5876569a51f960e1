"""Training curves: panels of the logged metrics (absent and all-zero ones skipped), train reward and EM on one
panel, held-out EM as points, rolling means on per-step curves; a PNG naming its panels."""

from __future__ import annotations

import matplotlib.pyplot as plt
from conftest import tiny_run_overrides
from PIL import Image
from rich.console import Console

from arlkit.config import load_config
from arlkit.eval.plots import PANELS, Panel, curve_panels, draw_panel, plot_curves, rolling_mean
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
        "train reward and EM",
        "held-out EM",
        "entropy",
        "tool calls / episode",
        "response tokens / episode",
        "skipped updates",  # non-zero at step 2; the all-zero env error rate gets no panel
    ]  # no KL-to-reference panel (no actor/kl logged), no approx. KL (0 at both steps), no SFT loss
    assert [p.title for p in curve_panels(_records())] == titles
    with Image.open(out) as img:
        assert img.text["Description"] == "panels: " + "; ".join(titles)
        assert img.size == (4 * 4 * 110, 2 * 3.2 * 110)  # 6 panels: 2 rows of 4, 4 × 3.2 in each at 110 dpi


def test_kl_panel_only_when_the_kl_is_not_all_zero() -> None:
    records = _records()
    records[1]["actor/approx_kl"] = 1e-4  # a second epoch moved π away from π_old
    assert "approx. KL(π_old ‖ π)" in [p.title for p in curve_panels(records)]


def _lines(panel: Panel, records: list[dict]) -> list:
    fig, ax = plt.subplots()
    draw_panel(ax, panel, records, (0, 20))
    lines = list(ax.get_lines())
    plt.close(fig)
    return lines


def test_reward_and_em_share_a_panel_and_one_curve_when_equal() -> None:
    panel = next(p for p in PANELS if p.title == "train reward and EM")
    differ = [{"step": s, "rollout/reward": -0.5 * (s == 1), "rollout/em": 0.0} for s in (1, 2)]
    equal = [{"step": s, "rollout/reward": 0.5, "rollout/em": 0.5} for s in (1, 2)]
    assert [ln.get_label() for ln in _lines(panel, differ)] == ["reward", "EM"]
    assert [ln.get_label() for ln in _lines(panel, equal)] == ["reward = EM"]


def test_long_runs_get_a_rolling_mean_and_evaluations_are_points() -> None:
    records = [{"step": s, "actor/entropy": float(s % 2)} for s in range(1, 21)]
    raw, mean = _lines(next(p for p in PANELS if p.title == "entropy"), records)
    # 20 steps: window round(20 / 10) = 2, so after the first step each point is (0 + 1) / 2
    assert list(raw.get_ydata()) == [float(s % 2) for s in range(1, 21)]
    assert list(mean.get_ydata()) == [1.0] + [0.5] * 19
    evals = [{"step": 0, "eval/em": 0.44}, {"step": 20, "eval/em": 0.67}]
    (points,) = _lines(next(p for p in PANELS if p.points), evals)
    assert points.get_linestyle() == "None" and points.get_marker() == "o"  # no line joins two evaluations


def test_rolling_mean_is_a_trailing_mean() -> None:
    # window 2: [1], [1, 2], [2, 3], [3, 4] -> 1, 1.5, 2.5, 3.5; window 3 at the 4th point: (2 + 3 + 4) / 3 = 3
    assert rolling_mean([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]
    assert rolling_mean([1.0, 2.0, 3.0, 4.0], 3) == [1.0, 1.5, 2.0, 3.0]


def test_no_logged_metric_writes_no_png(tmp_path) -> None:
    assert plot_curves([{"step": 1, "timing_s/update": 0.1}], tmp_path / "c.png") is None
    assert not (tmp_path / "c.png").exists()


def test_every_rl_panel_is_a_metric_the_loop_logs(tiny, tmp_path) -> None:
    """Guards the panel names against renames of the loop's metrics (a renamed metric would lose its panel)."""
    cfg = load_config(
        None, tiny_run_overrides(tiny.sft_dir, tmp_path / "run", "task.n_eval=0", "algo.kl_coef=0.1")
    )
    metrics = train_step(setup(cfg, Console(quiet=True)), 1)
    rl_keys = {k for p in PANELS for k in p.keys} - {"eval/em", "sft/loss", "guard/skipped_updates"}
    assert rl_keys <= set(metrics), rl_keys - set(metrics)
