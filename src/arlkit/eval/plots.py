"""Training curves as PNGs in the run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt

CURVES = (
    ("rollout/reward", "train reward"),
    ("rollout/em", "train EM"),
    ("eval/em", "held-out EM"),
    ("rollout/tool_calls", "tool calls / episode"),
    ("sft/loss", "SFT loss"),
)


def plot_curves(records: list[dict[str, Any]], out: Path) -> Path | None:
    """Reward and EM (train and held-out) over steps, one panel each; returns the PNG path."""
    panels = [(k, label) for k, label in CURVES if any(r.get(k) is not None for r in records)]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        pts = [(r["step"], r[key]) for r in records if r.get(key) is not None]
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, marker="o" if len(xs) < 10 else None, markersize=4)
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
