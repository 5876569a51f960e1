"""Trajectory filters of one RL step (TAO-RL, METHODS.md §4): which groups train, and with what loss weight.

Thin glue between Trajectories and the pure tensor rules of `algos/tao.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from arlkit.algos.tao import group_filter, post_tool_mask, tool_filter_all_failed, tool_filter_group_uniform
from arlkit.config import TaoConfig
from arlkit.trajectory import Batch, Trajectory


@dataclass(frozen=True)
class Filtered:
    trajectories: list[Trajectory]
    loss_weights: list[float]  # per kept trajectory; multiplies its loss mask
    stats: dict[str, float]  # bare names; the loop adds "tao/"


def tao_filter(trajs: Sequence[Trajectory], cfg: TaoConfig) -> Filtered:
    """Apply TAO-RL's group filter and tool filter. Counts are of groups (prompts), except `weighted_trajs`."""
    if not trajs:
        return Filtered([], [], {})
    dense = {g: i for i, g in enumerate(dict.fromkeys(t.group_id for t in trajs))}
    index = torch.tensor([dense[t.group_id] for t in trajs])
    keep = torch.ones(len(trajs), dtype=torch.bool)
    stats: dict[str, float] = {"groups_in": float(len(dense))}
    if cfg.group_filter:
        res = group_filter(
            torch.tensor([t.total_reward for t in trajs]),
            index,
            torch.tensor([t.overlong for t in trajs]),
            std_threshold=cfg.std_threshold,
            min_valid=cfg.min_valid,
        )
        keep &= res.keep
        stats.update(
            dropped_low_std=res.dropped_low_std,
            dropped_all_overlong=res.dropped_all_overlong,
            dropped_few_valid=res.dropped_few_valid,
        )
    calls = torch.tensor([t.tool_calls for t in trajs])  # (B, 2)
    weights = torch.ones(len(trajs))
    if cfg.tool_filter == "group_uniform":
        by_tools = tool_filter_group_uniform(index, calls[:, 0], calls[:, 1])
        stats["dropped_tool_uniform"] = float(len(set(index[keep & ~by_tools].tolist())))
        keep &= by_tools
    elif cfg.tool_filter == "all_failed_trajectory":
        weights = tool_filter_all_failed(calls[:, 0], calls[:, 1], strength=cfg.tool_filter_strength)
        stats["weighted_trajs"] = float((weights < 1).sum())
    kept = [i for i in range(len(trajs)) if keep[i]]
    stats["groups_kept"] = float(len({trajs[i].group_id for i in kept}))
    out = Filtered([trajs[i] for i in kept], [float(weights[i]) for i in kept], stats)
    return released_code_rules(out, len(dense)) if cfg.reading == "code" else out


def released_code_rules(kept: Filtered, want: int) -> Filtered:
    """TAO-RL's released trainer after its filters (`remove_clip`): an overlong rollout of a kept group takes
    no loss (its reward still counts in its group's advantage), and the kept groups are repeated — each copy
    a group of its own, as `repeat_with_uid_suffix` — until the step has `want` groups again. Copies are taken
    in the kept groups' order; the released code repeats the batch and keeps a random subset of groups, which
    gives each group the same count (⌊want/k⌋ or ⌈want/k⌉) in a random assignment."""
    weights = [0.0 if t.overlong else w for t, w in zip(kept.trajectories, kept.loss_weights, strict=True)]
    stats = kept.stats | {"zeroed_overlong": float(sum(t.overlong for t in kept.trajectories))}
    groups = list(dict.fromkeys(t.group_id for t in kept.trajectories))
    trajs = list(kept.trajectories)
    next_id = max(groups, default=0) + 1  # copies need ids no group of this batch has
    for c in range(want - len(groups) if groups else 0):
        g = groups[c % len(groups)]
        rows = [i for i, t in enumerate(kept.trajectories) if t.group_id == g]
        trajs += [replace(kept.trajectories[i], group_id=next_id + c) for i in rows]
        weights += [weights[i] for i in rows]
    stats["repeated_groups"] = float(max(want - len(groups), 0) if groups else 0)
    return Filtered(trajs, weights, stats)


def post_tool(batch: Batch, trajs: Sequence[Trajectory]) -> torch.Tensor:
    """(B, T) float: generated tokens of the turns right after a turn with a tool call."""
    K = max(max((len(t.turns) for t in trajs), default=1), 1)
    had = torch.zeros(len(trajs), K, dtype=torch.bool)
    for i, t in enumerate(trajs):
        for k, rec in enumerate(t.turns):
            had[i, k] = len(rec.calls) > 0
    return post_tool_mask((batch.loss_mask > 0).float(), batch.turn, had)
