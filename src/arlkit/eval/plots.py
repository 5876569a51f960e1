"""Training curves as PNGs in the run folder."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt


class Panel(NamedTuple):
    """One panel of curves.png: the metrics it draws (the names train/loop.py and train/sft_run.py log)."""

    title: str
    keys: tuple[str, ...]
    points: bool = False  # sparse evaluations: markers with their values, no line between them
    hide_if_zero: bool = False  # an all-zero curve says nothing here: no panel unless a value is non-zero


PANELS = (
    # one panel: with the Agent-R1 reward, reward is EM unless the format failed, so two panels repeat a curve
    Panel("train reward and EM", ("rollout/reward", "rollout/em")),
    Panel("held-out EM", ("eval/em",), points=True),  # the base and final evaluations (and any in between)
    Panel("KL to reference", ("actor/kl",), hide_if_zero=True),  # logged when algo.kl_coef > 0
    # 0 at every step with one epoch per batch, where π_old is π
    Panel("approx. KL(π_old ‖ π)", ("actor/approx_kl",), hide_if_zero=True),
    Panel("entropy", ("actor/entropy",)),
    Panel("tool calls / episode", ("rollout/tool_calls",)),
    Panel("response tokens / episode", ("rollout/response_tokens",)),
    Panel("env error rate", ("env/error_rate",), hide_if_zero=True),
    Panel("skipped updates", ("guard/skipped_updates",), hide_if_zero=True),
    Panel("SFT loss", ("sft/loss",)),
)
LABELS = {"rollout/reward": "reward", "rollout/em": "EM"}  # legend names; others use the metric's last part
MAX_COLUMNS = 4
MIN_POINTS_FOR_MEAN = 10  # fewer steps are drawn with markers and no rolling mean


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["step"], r[key]) for r in records if r.get(key) is not None]
    return [x for x, _ in pts], [y for _, y in pts]


def curve_panels(records: list[dict[str, Any]]) -> list[Panel]:
    """The panels with at least one logged value (for `hide_if_zero`, a non-zero one)."""

    def shown(p: Panel) -> bool:
        values = [v for k in p.keys for v in _series(records, k)[1]]
        return any(values) if p.hide_if_zero else bool(values)

    return [p for p in PANELS if shown(p)]


def rolling_mean(ys: list[float], window: int) -> list[float]:
    """Trailing mean of the last `window` values at each point (fewer at the start)."""
    out, total = [], 0.0
    for i, y in enumerate(ys):
        total += y - (ys[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def mean_window(n: int) -> int:
    """A tenth of the steps (2 to 25): smooths per-step noise while keeping the trend's shape."""
    return max(2, min(25, round(n / 10)))


def _draw_steps(ax: Any, xs: list[float], ys: list[float], label: str, colour: str) -> None:
    """A per-step curve: raw values faint, their rolling mean bold; short runs as markers on a line."""
    if len(xs) < MIN_POINTS_FOR_MEAN:
        ax.plot(xs, ys, marker="o", markersize=4, color=colour, label=label)
        return
    ax.plot(xs, ys, color=colour, alpha=0.3, linewidth=0.8)
    ax.plot(xs, rolling_mean(ys, mean_window(len(xs))), color=colour, linewidth=2, label=label)


def _draw_points(ax: Any, xs: list[float], ys: list[float], steps: tuple[float, float]) -> None:
    """Evaluations as labelled points over the run's whole step range, so where they fall is visible."""
    ax.plot(xs, ys, "o", markersize=7)
    for x, y in zip(xs, ys, strict=True):
        ax.annotate(f"{y:.3f}", (x, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=9)
    margin = max(1.0, 0.08 * (steps[1] - steps[0]))
    ax.set_xlim(steps[0] - margin, steps[1] + margin)
    low, high = min(ys), max(ys)
    pad = max(0.05, 0.15 * (high - low))
    ax.set_ylim(low - pad, high + 2 * pad)  # room for the labels above the points


def _label(key: str) -> str:
    return LABELS.get(key, key.split("/")[-1])


def draw_panel(ax: Any, panel: Panel, records: list[dict[str, Any]], steps: tuple[float, float]) -> None:
    """Draw `panel`'s logged metrics on `ax`; `steps` is the run's (first, last) step."""
    series = [(_label(k), *_series(records, k)) for k in panel.keys]
    series = [(label, xs, ys) for label, xs, ys in series if xs]
    if panel.points:
        _draw_points(ax, series[0][1], series[0][2], steps)
    else:
        if len(series) == 2 and series[0][1:] == series[1][1:]:  # the same curve twice: draw it once
            series = [(" = ".join(label for label, _, _ in series), *series[0][1:])]
        for i, (label, xs, ys) in enumerate(series):
            _draw_steps(ax, xs, ys, label, f"C{i}")
        if len(series) > 1:
            ax.legend(fontsize=8, loc="best")
    ax.set_title(panel.title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)


def plot_curves(records: list[dict[str, Any]], out: Path) -> Path | None:
    """The panels of `PANELS` that have values, over steps, in a grid; returns the PNG path (None when
    nothing was logged). The PNG's Description names its panels."""
    panels = curve_panels(records)
    if not panels:
        return None
    all_steps = [r["step"] for r in records]
    steps = (min(all_steps), max(all_steps))
    cols = min(MAX_COLUMNS, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        draw_panel(ax, panel, records, steps)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    n_steps = len({r["step"] for r in records})
    if n_steps >= MIN_POINTS_FOR_MEAN:
        caption = f"faint: each step · bold: mean of the last {mean_window(n_steps)} steps"
        fig.suptitle(caption, fontsize=9, color="0.35")
    fig.tight_layout()
    description = "panels: " + "; ".join(p.title for p in panels)
    fig.savefig(out, dpi=110, metadata={"Title": "arlkit training curves", "Description": description})
    plt.close(fig)
    return out
