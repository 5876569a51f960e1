"""Figures of the analyses (PASS@(k,T) and CEA) as PNGs a paper can use; each takes the JSON-ready result."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt

DPI = 150


def _save(fig: plt.Figure, out: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out


def passk_curves(result: dict, out: Path) -> Path:
    """PASS@k against k (log2 axis), one panel per cap T, one line per policy."""
    caps, ks = result["caps"], result["k"]
    fig, axes = plt.subplots(1, len(caps), figsize=(3.2 * len(caps), 3.2), sharey=True, squeeze=False)
    for ax, t in zip(axes[0], caps, strict=True):
        for name, ys in result["by_cap"][str(t)]["pass_at_k"].items():
            ax.plot(ks, ys, marker="o", markersize=3, label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks)
        ax.set_xticklabels([str(k) for k in ks], fontsize=7)
        ax.set_title(f"T = {t}")
        ax.set_xlabel("k")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("PASS@(k,T)")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"PASS@(k,T) on {result['n_questions']} questions, n = {result['n']}", fontsize=10)
    return _save(fig, out)


def passk_heatmap(result: dict, policy: str, out: Path) -> Path:
    """PASS@(k,T) of one policy as a T × k grid of annotated cells."""
    caps, ks = result["caps"], result["k"]
    grid = [result["by_cap"][str(t)]["pass_at_k"][policy] for t in caps]  # (len(caps), len(ks))
    fig, ax = plt.subplots(figsize=(0.7 * len(ks) + 1.6, 0.5 * len(caps) + 1.4))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if v < 0.6 else "k")
    ax.set_xticks(range(len(ks)), [str(k) for k in ks])
    ax.set_yticks(range(len(caps)), [str(t) for t in caps])
    ax.set_xlabel("k")
    ax.set_ylabel("tool-round cap T")
    ax.set_title(f"PASS@(k,T): {policy}", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.05)
    return _save(fig, out)


def passk_boundary(result: dict, out: Path) -> Path:
    """Capability boundary |B_T| (questions solved at least once in n) per cap, grouped by policy."""
    caps, policies = result["caps"], result["policies"]
    width = 0.8 / len(policies)
    fig, ax = plt.subplots(figsize=(1.2 * len(caps) + 2, 3.2))
    for i, name in enumerate(policies):
        sizes = [result["by_cap"][str(t)]["boundary"][name] for t in caps]
        ax.bar(
            [j + (i - (len(policies) - 1) / 2) * width for j in range(len(caps))], sizes, width, label=name
        )
    ax.set_xticks(range(len(caps)), [f"T = {t}" for t in caps])
    ax.set_ylabel(f"|B_T| (of {result['n_questions']})")
    ax.set_title(f"capability boundary at n = {result['n']}", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, out)


def cea_lambdas(names: Sequence[str], lambdas: Sequence[Sequence[float]], out: Path) -> Path:
    """Box plot of each λ component over questions, and the distribution of the interference term λ23."""
    cols = list(zip(*lambdas, strict=True)) if lambdas else [[] for _ in names]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    left.boxplot([list(c) for c in cols], showmeans=True)
    left.set_xticks(range(1, len(names) + 1), list(names))
    left.axhline(0, color="k", lw=0.6)
    left.set_title("λ per question (logit units)", fontsize=10)
    left.grid(alpha=0.3, axis="y")
    l23 = list(cols[-1])
    right.hist(l23, bins=min(30, max(5, len(l23) // 3)), color="tab:purple", alpha=0.8)
    right.axvline(0, color="k", lw=0.8)
    share = sum(v < 0 for v in l23) / len(l23) if l23 else float("nan")
    right.set_title(f"λ23 (interference): {share:.0%} of questions < 0", fontsize=10)
    right.set_xlabel("λ23")
    return _save(fig, out)


def cea_rates(models: Sequence[str], rates: Sequence[float], out: Path) -> Path:
    """Mean success rate of each of the six CEA models."""
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(list(models), list(rates), color="tab:blue")
    for i, v in enumerate(rates):
        ax.text(i, v + 0.01, f"{v:.2f}", ha="center", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("success rate")
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, out)


def grad_angles(angles: dict[str, Sequence[float]], out: Path) -> Path:
    """Histograms of gradient angles (degrees): cross-role (same trajectory) and same-role (across)."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for label, values in angles.items():
        if values:
            ax.hist(list(values), bins=36, range=(0, 180), alpha=0.5, label=f"{label} (n={len(values)})")
    ax.axvline(90, color="k", lw=0.6, ls="--")
    ax.set_xlabel("angle between policy-loss gradients (degrees)")
    ax.set_ylabel("pairs")
    ax.legend(fontsize=8)
    return _save(fig, out)
