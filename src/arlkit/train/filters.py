"""Trajectory filters of one RL step (TAO-RL, METHODS.md §4): which groups train, and with what loss weight.

Thin glue between Trajectories and the pure tensor rules of `algos/tao.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
    return Filtered([trajs[i] for i in kept], [float(weights[i]) for i in kept], stats)


def post_tool(batch: Batch, trajs: Sequence[Trajectory]) -> torch.Tensor:
    """(B, T) float: generated tokens of the turns right after a turn with a tool call."""
    K = max(max((len(t.turns) for t in trajs), default=1), 1)
    had = torch.zeros(len(trajs), K, dtype=torch.bool)
    for i, t in enumerate(trajs):
        for k, rec in enumerate(t.turns):
            had[i, k] = len(rec.calls) > 0
    return post_tool_mask((batch.loss_mask > 0).float(), batch.turn, had)
