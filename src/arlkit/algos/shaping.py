"""Reward shaping and group filters that act before advantages (DAPO, arXiv 2503.14476).

Pure functions on tensors. Shapes: B trajectories.
"""

from __future__ import annotations

import torch


def overlong_penalty(
    n_generated: torch.Tensor, max_tokens: int, buffer: int, factor: float = 1.0
) -> torch.Tensor:
    """DAPO's soft overlong punishment, counting generated tokens only (never observations). (B,) -> (B,).

    0 up to max_tokens − buffer, then a linear ramp to −factor at max_tokens, −factor beyond:
    penalty = factor · min(0, (max_tokens − buffer − n) / buffer), floored at −factor.
    """
    if buffer <= 0 or buffer > max_tokens:
        raise ValueError(f"overlong buffer must be in 1..max_tokens ({max_tokens}), got {buffer}")
    excess = (n_generated.float() - (max_tokens - buffer)).clamp(min=0.0)
    return -factor * (excess / buffer).clamp(max=1.0)


def varied_groups(scores: torch.Tensor, group_index: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
    """(B,) bool: rows whose group's rewards are not all equal (DAPO dynamic sampling keeps these).

    A group whose rewards are all equal has zero GRPO advantage everywhere and only dilutes the batch.
    """
    n_groups = int(group_index.max()) + 1
    hi = torch.full((n_groups,), -torch.inf).scatter_reduce(0, group_index, scores, "amax")
    lo = torch.full((n_groups,), torch.inf).scatter_reduce(0, group_index, scores, "amin")
    return (hi - lo)[group_index] > tol
