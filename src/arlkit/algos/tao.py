"""TAO-RL: tool-aware trajectory filtering and entropy-guided exploration (arXiv 2606.03762, METHODS.md §4).

Pure functions on tensors. Shapes: B trajectories, T tokens, K turns.

Where the paper and the released code disagree, both rules are here as options: the paper's tool filter drops
a group whose tool invocations all fail or all succeed (`group_uniform`, our default); the code down-weights a
single trajectory whose every tool call failed (`all_failed_trajectory`, loss mask × (1 − strength)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GroupFilterResult:
    keep: torch.Tensor  # (B,) bool
    dropped_low_std: int  # groups dropped because their rewards (nearly) all agree
    dropped_all_overlong: int  # groups whose every rollout was overlong
    dropped_few_valid: int  # groups with fewer than `min_valid` rollouts that are not overlong


def _per_group(values: torch.Tensor, group_index: torch.Tensor, n_groups: int) -> torch.Tensor:
    return torch.zeros(n_groups, dtype=values.dtype).index_add_(0, group_index, values)


def group_filter(
    scores: torch.Tensor,
    group_index: torch.Tensor,
    overlong: torch.Tensor,
    *,
    std_threshold: float = 1e-3,
    min_valid: int = 4,
) -> GroupFilterResult:
    """TAO-RL's group filter. scores: (B,) episode returns; overlong: (B,) bool; group_index: (B,) dense.

    A group is dropped when std(rewards) < std_threshold (all right or all wrong: no learning signal), when
    every rollout is overlong, or when fewer than `min_valid` rollouts are not overlong. The checks are
    counted in that order (a group is counted once, under the first rule it fails).
    """
    G = int(group_index.max()) + 1
    count = _per_group(torch.ones_like(scores), group_index, G)
    mean = _per_group(scores, group_index, G) / count
    var = _per_group((scores - mean[group_index]) ** 2, group_index, G) / (count - 1).clamp(min=1)
    low_std = var.sqrt() < std_threshold
    valid = _per_group((~overlong).float(), group_index, G)
    all_overlong = (valid == 0) & ~low_std
    few_valid = (valid < min_valid) & ~low_std & ~all_overlong
    drop = low_std | all_overlong | few_valid
    return GroupFilterResult(
        keep=~drop[group_index],
        dropped_low_std=int(low_std.sum()),
        dropped_all_overlong=int(all_overlong.sum()),
        dropped_few_valid=int(few_valid.sum()),
    )


def tool_filter_group_uniform(
    group_index: torch.Tensor, n_calls: torch.Tensor, n_ok: torch.Tensor
) -> torch.Tensor:
    """(B,) bool keep: the paper's rule — drop a group whose tool invocations uniformly fail or uniformly
    succeed. n_calls, n_ok: (B,) per-trajectory counts of tool calls (malformed ones count as failed) and of
    successful ones. A group that made no tool call at all has nothing to judge and is kept (our choice)."""
    G = int(group_index.max()) + 1
    calls = _per_group(n_calls.float(), group_index, G)
    ok = _per_group(n_ok.float(), group_index, G)
    uniform = (calls > 0) & ((ok == 0) | (ok == calls))
    return ~uniform[group_index]


def tool_filter_all_failed(
    n_calls: torch.Tensor, n_ok: torch.Tensor, *, strength: float = 1.0
) -> torch.Tensor:
    """(B,) loss weight: the released code's rule — a trajectory that used tools but made no valid call has
    its loss mask multiplied by (1 − strength); every other trajectory keeps weight 1."""
    failed = (n_calls > 0) & (n_ok == 0)
    return torch.where(failed, torch.tensor(1.0 - strength), torch.tensor(1.0))


def post_tool_mask(loss_mask: torch.Tensor, turn: torch.Tensor, turn_had_call: torch.Tensor) -> torch.Tensor:
    """(B, T) float: the generated tokens of every assistant turn that directly follows a turn with a tool call.

    loss_mask, turn: (B, T); turn_had_call: (B, K) bool, whether turn k made at least one tool call.
    """
    prev = (turn - 1).clamp(min=0)  # (B, T) index of the previous turn
    had = turn_had_call.gather(1, prev.clamp(max=turn_had_call.shape[1] - 1)) & (turn > 0)
    return loss_mask * had.float()


def entropy_shaping(
    advantages: torch.Tensor,
    entropies: torch.Tensor,
    valid_mask: torch.Tensor,
    post_tool: torch.Tensor,
    *,
    alpha: float = 0.01,
    tool_aware_only: bool = True,
    fallback_all: bool = False,
) -> torch.Tensor:
    """Ã_t = A_t · (1 + α · z(H_t)) on post-tool tokens (all valid tokens if not `tool_aware_only`).

    z is the z-score of the entropy over all valid tokens of the given (micro-)batch. H is detached here: the
    released code does not detach it, so the shaping factor would carry a gradient; we treat it as a
    weight, which is what the paper's equation describes. `fallback_all` is the released code's rule for a
    micro-batch without any post-tool token: it shapes every valid token instead (the paper shapes none).
    All inputs (B, T); returns (B, T).
    """
    h = entropies.detach()
    n = valid_mask.sum().clamp(min=1.0)
    mean = (h * valid_mask).sum() / n
    std = (((h - mean) * valid_mask) ** 2).sum().div(n).sqrt().clamp(min=1e-8)
    z = (h - mean) / std
    where = post_tool if tool_aware_only else valid_mask
    if fallback_all and float((where * valid_mask).sum()) == 0:
        where = valid_mask
    return advantages * (1.0 + alpha * z * where)
