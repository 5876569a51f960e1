"""Policy losses and loss aggregation: pure functions on tensors (METHODS.md §3).

Shapes: B trajectories, T tokens. `loss_mask` is 1 on generated tokens that take loss, 0 elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from arlkit.algos.registry import Registry

AGGREGATIONS: Registry = Registry("loss aggregation")
POLICY_LOSSES: Registry = Registry("policy loss")


@dataclass(frozen=True)
class LossOutput:
    loss: torch.Tensor  # scalar
    stats: dict[str, torch.Tensor]  # bare names; detached scalars


@AGGREGATIONS.register("token_mean")
def token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over all unmasked tokens of the batch (DAPO, verl default)."""
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


@AGGREGATIONS.register("seq_mean_token_sum")
def seq_mean_token_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over each sequence's tokens, mean over sequences (Dr.GRPO uses a constant divisor instead)."""
    return (values * mask).sum(-1).mean()


@AGGREGATIONS.register("seq_mean_token_mean")
def seq_mean_token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each sequence's tokens, then over sequences with at least one token (original GRPO)."""
    per_seq = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    has = (mask.sum(-1) > 0).float()
    return (per_seq * has).sum() / has.sum().clamp(min=1.0)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


@POLICY_LOSSES.register("ppo_clip")
def ppo_clip_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    aggregation: str = "token_mean",
) -> LossOutput:
    """PPO clipped surrogate with asymmetric clip ("clip-higher", DAPO arXiv 2503.14476) and dual clip.

    per-token loss = −min(r·A, clip(r, 1−ε_low, 1+ε_high)·A), r = exp(logπ − logπ_old); with dual clip c > 1,
    tokens with A < 0 have their loss capped at −c·A (arXiv 1912.09729). All inputs (B, T).
    """
    log_ratio = (logprobs - old_logprobs).clamp(-20.0, 20.0)
    ratio = log_ratio.exp()
    surr1 = ratio * advantages
    surr2 = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * advantages
    loss = -torch.minimum(surr1, surr2)
    clipped = (surr2 < surr1).float()
    if dual_clip is not None:
        capped = torch.minimum(loss, -dual_clip * advantages)
        loss = torch.where(advantages < 0, capped, loss)
    agg = AGGREGATIONS.get(aggregation)(loss, loss_mask)
    with torch.no_grad():
        stats = {
            "clip_frac": masked_mean(clipped, loss_mask),
            "approx_kl": masked_mean(0.5 * log_ratio**2, loss_mask),
            "ratio_mean": masked_mean(ratio, loss_mask),
        }
    return LossOutput(loss=agg, stats=stats)
