"""Advantage estimators: pure functions on tensors, registered by name (METHODS.md §3).

Shapes: B trajectories, T tokens. Every estimator takes an `AdvantageInputs` and keyword hyper-parameters and
returns an `AdvantageOutput`; advantages are zero outside `loss_mask` (generated tokens only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from arlkit.algos.registry import Registry


@dataclass(frozen=True)
class AdvantageInputs:
    token_rewards: torch.Tensor  # (B, T) step rewards on turn ends, final reward on the last generated token
    loss_mask: torch.Tensor  # (B, T) 1 = generated token
    group_index: torch.Tensor  # (B,) long, rollouts of one prompt share an index

    @property
    def scores(self) -> torch.Tensor:
        """(B,) undiscounted episode return."""
        return self.token_rewards.sum(-1)


@dataclass(frozen=True)
class AdvantageOutput:
    advantages: torch.Tensor  # (B, T), 0 outside loss_mask
    returns: torch.Tensor  # (B, T)


ADVANTAGES: Registry = Registry("advantage estimator")


def group_stats(scores: torch.Tensor, group_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row mean and (unbiased) std of its group's scores. scores, group_index: (B,) -> (B,), (B,).

    A group of one has std 0.
    """
    n_groups = int(group_index.max()) + 1
    count = torch.zeros(n_groups).index_add_(0, group_index, torch.ones_like(scores))
    mean = torch.zeros(n_groups).index_add_(0, group_index, scores) / count
    sq = torch.zeros(n_groups).index_add_(0, group_index, (scores - mean[group_index]) ** 2)
    std = (sq / (count - 1).clamp(min=1)).sqrt()
    return mean[group_index], std[group_index]


@ADVANTAGES.register("grpo")
def grpo_advantages(x: AdvantageInputs, *, eps: float = 1e-6, norm_by_std: bool = True) -> AdvantageOutput:
    """GRPO (arXiv 2402.03300): A = (R − mean_group) / (std_group + eps), broadcast to generated tokens.

    std is the unbiased sample std (torch.std default), as in verl and TRL. `norm_by_std=False` gives the
    Dr.GRPO numerator (arXiv 2503.20783).
    """
    scores = x.scores
    mean, std = group_stats(scores, x.group_index)
    adv = scores - mean
    if norm_by_std:
        adv = adv / (std + eps)
    tokens = adv[:, None] * x.loss_mask  # (B, T)
    return AdvantageOutput(advantages=tokens, returns=tokens)
