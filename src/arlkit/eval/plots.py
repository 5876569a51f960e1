"""Training curves as PNGs in the run folder."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt

# (metric, panel title) in panel order; the names are those train/loop.py and train/sft_run.py log
CURVES = (
    ("rollout/reward", "train reward"),
    ("rollout/em", "train EM"),
    ("eval/em", "held-out EM"),
    ("actor/kl", "KL to reference"),  # logged when algo.kl_coef > 0
    ("actor/approx_kl", "approx. KL(π_old ‖ π)"),
    ("actor/entropy", "entropy"),
    ("rollout/tool_calls", "tool calls / episode"),
    ("rollout/response_tokens", "response tokens / episode"),
    ("env/error_rate", "env error rate"),
    ("guard/skipped_updates", "skipped updates"),
    ("sft/loss", "SFT loss"),
)
ALARMS = {"env/error_rate", "guard/skipped_updates"}  # logged every step: a panel only when not all 0
MAX_COLUMNS = 4


def curve_panels(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The (metric, title) panels that have at least one logged value (for an alarm, a non-zero one)."""

    def shown(key: str) -> bool:
        values = [r[key] for r in records if r.get(key) is not None]
        return any(values) if key in ALARMS else bool(values)

    return [(k, label) for k, label in CURVES if shown(k)]


def plot_curves(records: list[dict[str, Any]], out: Path) -> Path | None:
    """One panel per metric of `CURVES` that was logged, over steps, in a grid; returns the PNG path (None
    when nothing was logged). The PNG's Description names its panels."""
    panels = curve_panels(records)
    if not panels:
        return None
    cols = min(MAX_COLUMNS, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, (key, label) in zip(axes.flat, panels, strict=False):
        pts = [(r["step"], r[key]) for r in records if r.get(key) is not None]
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, marker="o" if len(xs) < 10 else None, markersize=4)
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.tight_layout()
    description = "panels: " + "; ".join(label for _, label in panels)
    fig.savefig(out, dpi=110, metadata={"Title": "arlkit training curves", "Description": description})
    plt.close(fig)
    return out
