"""Advantage estimators: pure functions on tensors, registered by name (METHODS.md §2–3).

Every estimator has the signature `fn(x: AdvantageInputs, p: AdvantageParams) -> AdvantageOutput`, so the
loop never branches on a name; what an estimator needs beyond rewards (a critic's values, a greedy baseline)
is declared when it is registered (`ADVANTAGES.info(name)`). Advantages are zero outside `loss_mask`:
only generated tokens carry them.

Rewards arrive per token (`token_rewards`): step (process) rewards on the last token of the action that
caused them, the outcome on the last generated token, and, with a KL penalty in the reward, −β·KL on every
generated token. Episode returns and returns-to-go are discounted over the time axis of `algos/returns.py`
(generated tokens only unless `aligned=False`); with the default γ = 1 the episode return is the plain sum.

Shapes: B trajectories, T tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from arlkit.algos.registry import Registry
from arlkit.algos.returns import DiscountUnit, discounted_returns, gae, time_mask


@dataclass(frozen=True)
class AdvantageInputs:
    token_rewards: torch.Tensor  # (B, T)
    loss_mask: torch.Tensor  # (B, T) 1 = generated token
    group_index: torch.Tensor  # (B,) long, rollouts of one prompt share an index
    turn: torch.Tensor | None = None  # (B, T) turn index, for discount_unit="turn"
    attention_mask: torch.Tensor | None = None  # (B, T) 1 = real token, for aligned=False
    values: torch.Tensor | None = None  # (B, T) V(c_<t) from the critic, for "gae"
    baseline_scores: torch.Tensor | None = None  # (B,) reward of a greedy rollout of the prompt ("remax")

    @property
    def scores(self) -> torch.Tensor:
        """(B,) undiscounted episode return."""
        return self.token_rewards.sum(-1)


@dataclass(frozen=True)
class AdvantageParams:
    gamma: float = 1.0  # discount; 1.0 as in Agent-R1 and verl's outcome-reward recipes
    lam: float = 1.0  # GAE λ
    discount_unit: DiscountUnit = "token"  # "turn": discount once per turn boundary, not per token
    aligned: bool = True  # Agent-R1 advantage mask: time runs over generated tokens only
    eps: float = 1e-6  # added to the group std
    norm_by_std: bool = True  # GRPO divides by the group std; Dr.GRPO (arXiv 2503.20783) does not
    whiten: bool = (
        True  # gae: whiten the advantages over the batch's generated tokens, as verl and Agent-R1 do
    )


@dataclass(frozen=True)
class AdvantageOutput:
    advantages: torch.Tensor  # (B, T), 0 outside loss_mask
    returns: torch.Tensor  # (B, T) value targets (gae) or returns-to-go; 0 outside loss_mask


# `group_relative=True`: the estimator compares a rollout with the others of its prompt's group, so a group of
# one gives advantage 0 everywhere (the config refuses `rollout.n: 1` with these)
ADVANTAGES: Registry = Registry("advantage estimator")


def group_stats(
    scores: torch.Tensor, group_index: torch.Tensor, *, unbiased: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row mean and std of its group's scores. scores, group_index: (B,) -> (B,), (B,).

    std is the unbiased sample std (divisor G − 1, torch.std's default), or the population std (divisor G)
    with `unbiased=False`. A group of one has std 0.
    """
    n_groups = int(group_index.max()) + 1
    count = torch.zeros(n_groups).index_add_(0, group_index, torch.ones_like(scores))
    mean = torch.zeros(n_groups).index_add_(0, group_index, scores) / count
    sq = torch.zeros(n_groups).index_add_(0, group_index, (scores - mean[group_index]) ** 2)
    std = (sq / (count - 1 if unbiased else count).clamp(min=1)).sqrt()
    return mean[group_index], std[group_index]


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x − mean) / sqrt(var + eps) over the masked entries of the whole batch; 0 outside the mask.

    var is the unbiased (Bessel-corrected) variance, as verl's `masked_whiten` (`masked_var(unbiased=True)`);
    with a single masked entry (where verl raises) the divisor n − 1 is floored at 1.
    """
    n = mask.sum()
    mean = (x * mask).sum() / n.clamp(min=1.0)
    var = (((x - mean) * mask) ** 2).sum() / (n - 1.0).clamp(min=1.0)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def _returns_to_go(x: AdvantageInputs, p: AdvantageParams) -> torch.Tensor:
    steps = time_mask(x.loss_mask, x.attention_mask, p.aligned)
    return discounted_returns(x.token_rewards, steps, x.turn, p.gamma, p.discount_unit) * x.loss_mask


def episode_returns(x: AdvantageInputs, p: AdvantageParams) -> torch.Tensor:
    """(B,) discounted return from each row's first generated token (the plain sum when γ = 1)."""
    g = _returns_to_go(x, p)
    first = x.loss_mask.argmax(-1)  # index of the first generated token (0 for an empty row, whose g is 0)
    return g.gather(1, first[:, None]).squeeze(1)


def _broadcast(per_row: torch.Tensor, mask: torch.Tensor) -> AdvantageOutput:
    tokens = per_row[:, None] * mask  # (B, T)
    return AdvantageOutput(advantages=tokens, returns=tokens)


@ADVANTAGES.register("grpo", group_relative=True)
def grpo(x: AdvantageInputs, p: AdvantageParams) -> AdvantageOutput:
    """GRPO (arXiv 2402.03300): A = (R − mean_group) / (std_group + ε), broadcast to generated tokens.

    std is the unbiased sample std (torch.std default), as in verl and TRL.
    """
    scores = episode_returns(x, p)
    mean, std = group_stats(scores, x.group_index)
    adv = scores - mean
    if p.norm_by_std:
        adv = adv / (std + p.eps)
    return _broadcast(adv, x.loss_mask)


@ADVANTAGES.register("dr_grpo", group_relative=True)
def dr_grpo(x: AdvantageInputs, p: AdvantageParams) -> AdvantageOutput:
    """Dr.GRPO (arXiv 2503.20783): A = R − mean_group, no std division. Pair it with the
    `seq_mean_token_sum_norm` aggregation (token sum divided by a constant) as the paper does."""
    scores = episode_returns(x, p)
    mean, _ = group_stats(scores, x.group_index)
    return _broadcast(scores - mean, x.loss_mask)


@ADVANTAGES.register("rloo", group_relative=True)
def rloo(x: AdvantageInputs, p: AdvantageParams) -> AdvantageOutput:
    """RLOO (arXiv 2402.14740): A_i = R_i − mean of the other G−1 rewards of the group = G/(G−1)·(R_i − mean).

    A group of one has no baseline and gets advantage 0.
    """
    scores = episode_returns(x, p)
    mean, _ = group_stats(scores, x.group_index)
    count = torch.zeros(int(x.group_index.max()) + 1).index_add_(0, x.group_index, torch.ones_like(scores))
    n = count[x.group_index]
    adv = torch.where(n > 1, (scores - mean) * n / (n - 1).clamp(min=1), torch.zeros_like(scores))
    return _broadcast(adv, x.loss_mask)


@ADVANTAGES.register("reinforce_pp")
def reinforce_pp(x: AdvantageInputs, p: AdvantageParams) -> AdvantageOutput:
    """REINFORCE++ (arXiv 2501.03262): token-level discounted return-to-go (the KL penalty, when configured
    in the reward, is part of `token_rewards`), whitened over all generated tokens of the batch."""
    g = _returns_to_go(x, p)
    return AdvantageOutput(advantages=masked_whiten(g, x.loss_mask), returns=g)


@ADVANTAGES.register("reinforce_pp_baseline", group_relative=True)
def reinforce_pp_baseline(x: AdvantageInputs, p: AdvantageParams) -> AdvantageOutput:
    """REINFORCE++-baseline: the return-to-go minus the group mean of the episode returns, then whitened
    over the batch. With outcome rewards and γ = 1 this is (R − mean_group), whitened (verl's definition)."""
    g = _returns_to_go(x, p)
    mean, _ = group_stats(episode_returns(x, p), x.group_index)
    return AdvantageOutput(
        advantages=masked_whiten((g - mean[:, None]) * x.loss_mask, x.loss_mask), returns=g
    )


@ADVANTAGES.register("remax", needs_greedy_baseline=True)
def remax(x: AdvantageInputs, p: AdvantageParams) -> AdvantageOutput:
    """ReMax (arXiv 2310.10505): A_t = G_t − R_greedy, the return-to-go minus the reward of a greedy rollout
    of the same prompt (the loop runs one per prompt when this estimator is chosen)."""
    if x.baseline_scores is None:
        raise ValueError("remax needs baseline_scores: the reward of a greedy rollout per row")
    g = _returns_to_go(x, p)
    return AdvantageOutput(advantages=(g - x.baseline_scores[:, None]) * x.loss_mask, returns=g)


@ADVANTAGES.register("gae", needs_values=True)
def gae_advantages(x: AdvantageInputs, p: AdvantageParams) -> AdvantageOutput:
    """PPO's GAE with a critic. Aligned (default): over generated tokens only, so the value at the last token
    of an action bootstraps from the value at the next action token across the observation (Agent-R1).

    The value targets are the raw A + V; with `p.whiten` (default, as verl's `compute_gae_advantage_return` and
    Agent-R1) the advantages are then whitened over the batch's generated tokens, so PPO's step size does not
    scale with the advantage spread.
    """
    if x.values is None:
        raise ValueError("gae needs values from a critic")
    steps = time_mask(x.loss_mask, x.attention_mask, p.aligned)
    adv, ret = gae(x.token_rewards, x.values, steps, x.turn, p.gamma, p.lam, p.discount_unit)
    adv = masked_whiten(adv, x.loss_mask) if p.whiten else adv * x.loss_mask
    return AdvantageOutput(advantages=adv, returns=ret * x.loss_mask)
