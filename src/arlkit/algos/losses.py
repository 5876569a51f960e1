"""Policy losses, the value loss and loss aggregation: pure functions on tensors (METHODS.md §3).

Shapes: B trajectories, T tokens. `loss_mask` is 1 on generated tokens that take loss, 0 elsewhere.
Every policy loss has the signature
`fn(logprobs, old_logprobs, advantages, loss_mask, *, clip_low, clip_high, dual_clip, aggregation,
norm_constant) -> LossOutput`; a loss ignores the knobs it has no use for (said in its docstring).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from arlkit.algos.registry import Registry

AGGREGATIONS: Registry = Registry("loss aggregation")
POLICY_LOSSES: Registry = Registry("policy loss")

_MAX_LOG_RATIO = 20.0  # exp(20) ≈ 5e8: keeps far-off tokens finite; they are clipped anyway


@dataclass(frozen=True)
class LossOutput:
    loss: torch.Tensor  # scalar
    stats: dict[str, torch.Tensor]  # bare names; detached scalars


# Aggregations share `(values, mask, *, norm_constant)`; verl and TRL differ in their defaults, so name them.
@AGGREGATIONS.register("token_mean")
def token_mean(
    values: torch.Tensor, mask: torch.Tensor, *, norm_constant: float | None = None
) -> torch.Tensor:
    """Mean over all unmasked tokens of the batch (DAPO arXiv 2503.14476, verl's default)."""
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


@AGGREGATIONS.register("seq_mean_token_sum")
def seq_mean_token_sum(
    values: torch.Tensor, mask: torch.Tensor, *, norm_constant: float | None = None
) -> torch.Tensor:
    """Sum over each sequence's tokens, mean over sequences with at least one token (verl, Agent-R1): an empty
    row (no generated token, or all masked by a filter) would otherwise dilute the mean."""
    has = (mask.sum(-1) > 0).float()
    return ((values * mask).sum(-1) * has).sum() / has.sum().clamp(min=1.0)


@AGGREGATIONS.register("seq_mean_token_sum_norm")
def seq_mean_token_sum_norm(
    values: torch.Tensor, mask: torch.Tensor, *, norm_constant: float | None = None
) -> torch.Tensor:
    """Dr.GRPO (arXiv 2503.20783): each sequence's token sum divided by one constant (the generation budget,
    `norm_constant`), mean over sequences — no length bias from per-sequence normalisation."""
    if norm_constant is None or norm_constant <= 0:
        raise ValueError("seq_mean_token_sum_norm needs a positive norm_constant (the generation budget)")
    return (values * mask).sum(-1).mean() / norm_constant


@AGGREGATIONS.register("seq_mean_token_mean")
def seq_mean_token_mean(
    values: torch.Tensor, mask: torch.Tensor, *, norm_constant: float | None = None
) -> torch.Tensor:
    """Mean over each sequence's tokens, then over sequences with at least one token (original GRPO)."""
    per_seq = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    has = (mask.sum(-1) > 0).float()
    return (per_seq * has).sum() / has.sum().clamp(min=1.0)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def _clipped_surrogate(
    ratio: torch.Tensor, advantages: torch.Tensor, clip_low: float, clip_high: float, dual_clip: float | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token −min(r·A, clip(r)·A), with the dual clip cap −c·A for A < 0. Returns loss, clipped, dual."""
    surr1 = ratio * advantages
    surr2 = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * advantages
    loss = -torch.minimum(surr1, surr2)
    clipped = (surr2 < surr1).float()
    dual = torch.zeros_like(loss)
    if dual_clip is not None:
        cap = -dual_clip * advantages
        dual = ((advantages < 0) & (loss > cap)).float()
        loss = torch.where(advantages < 0, torch.minimum(loss, cap), loss)
    return loss, clipped, dual


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
    norm_constant: float | None = None,
) -> LossOutput:
    """PPO clipped surrogate with asymmetric clip ("clip-higher", DAPO arXiv 2503.14476) and dual clip.

    per-token loss = −min(r·A, clip(r, 1−ε_low, 1+ε_high)·A), r = exp(logπ − logπ_old); with dual clip c > 1,
    tokens with A < 0 have their loss capped at −c·A (arXiv 1912.09729). All inputs (B, T).
    """
    log_ratio = (logprobs - old_logprobs).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = log_ratio.exp()
    loss, clipped, dual = _clipped_surrogate(ratio, advantages, clip_low, clip_high, dual_clip)
    agg = AGGREGATIONS.get(aggregation)(loss, loss_mask, norm_constant=norm_constant)
    with torch.no_grad():
        stats = {
            "clip_frac": masked_mean(clipped, loss_mask),
            "dual_clip_frac": masked_mean(dual, loss_mask),
            "approx_kl": masked_mean(0.5 * log_ratio**2, loss_mask),
            "ratio_mean": masked_mean(ratio, loss_mask),
        }
    return LossOutput(loss=agg, stats=stats)


# GSPO's own clip range and aggregation (arXiv 2507.18071): a per-token geometric-mean ratio moves ~1e-4 per
# step, so PPO's 0.2/0.28 would never clip. AlgoConfig fills the fields a config leaves unset from these.
GSPO_DEFAULTS = {"clip_low": 3e-4, "clip_high": 4e-4, "aggregation": "seq_mean_token_mean"}


@POLICY_LOSSES.register("gspo", defaults=GSPO_DEFAULTS)
def gspo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
    dual_clip: float | None = None,
    aggregation: str = "seq_mean_token_mean",
    norm_constant: float | None = None,
) -> LossOutput:
    """GSPO (arXiv 2507.18071), token form: the sequence ratio s_i = exp(mean_t log(π/π_old)) (the geometric
    mean of the token ratios over the sequence's generated tokens) is clipped per sequence.

    Per token, r_{i,t} = sg(s_i) · π(c_t)/sg(π(c_t)): its value is s_i and its gradient s_i·∇logπ(c_t), so with
    a sequence-constant advantage this is GSPO exactly and token-varying advantages (e.g. after shaping) are
    allowed (the paper's GSPO-token). The paper's clip range is tiny (3e-4/4e-4) because s_i is a per-token
    geometric mean. `dual_clip` is not used.
    """
    log_ratio = (logprobs - old_logprobs).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO) * loss_mask
    seq_log_ratio = log_ratio.sum(-1) / loss_mask.sum(-1).clamp(min=1.0)  # (B,)
    token_log_ratio = (
        seq_log_ratio.detach()[:, None] + logprobs - logprobs.detach()
    )  # (B, T), value = log s_i
    ratio = token_log_ratio.clamp(max=_MAX_LOG_RATIO).exp()
    loss, clipped, _ = _clipped_surrogate(ratio, advantages, clip_low, clip_high, None)
    agg = AGGREGATIONS.get(aggregation)(loss, loss_mask, norm_constant=norm_constant)
    with torch.no_grad():
        has = (loss_mask.sum(-1) > 0).float()
        stats = {
            "clip_frac": masked_mean(clipped, loss_mask),
            "approx_kl": masked_mean(0.5 * log_ratio**2, loss_mask),
            "ratio_mean": (seq_log_ratio.exp() * has).sum() / has.sum().clamp(min=1.0),
        }
    return LossOutput(loss=agg, stats=stats)


@POLICY_LOSSES.register("reinforce")
def reinforce_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    aggregation: str = "token_mean",
    norm_constant: float | None = None,
) -> LossOutput:
    """Plain policy gradient, −A·logπ(c_t) per token (Williams 1992). No ratio and no clipping: meant for
    one on-policy epoch; `old_logprobs` only feeds the approx-KL statistic, the clip knobs are unused."""
    loss = -advantages * logprobs
    agg = AGGREGATIONS.get(aggregation)(loss, loss_mask, norm_constant=norm_constant)
    with torch.no_grad():
        log_ratio = logprobs - old_logprobs
        stats = {
            "clip_frac": torch.zeros(()),
            "approx_kl": masked_mean(0.5 * log_ratio**2, loss_mask),
            "ratio_mean": masked_mean(log_ratio.clamp(max=_MAX_LOG_RATIO).exp(), loss_mask),
        }
    return LossOutput(loss=agg, stats=stats)


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    clip_range: float | None = 0.2,
    aggregation: str = "token_mean",
    norm_constant: float | None = None,
) -> LossOutput:
    """PPO value loss ½·max((V − R)², (V_old + clip(V − V_old, ±ε) − R)²) per token; no clip when
    `clip_range` is None. All inputs (B, T); only generated tokens (`loss_mask`) are regressed."""
    err = (values - returns) ** 2
    if clip_range is not None:
        clipped_v = old_values + (values - old_values).clamp(-clip_range, clip_range)
        err_clipped = (clipped_v - returns) ** 2
        loss = 0.5 * torch.maximum(err, err_clipped)
        frac = masked_mean((err_clipped > err).float(), loss_mask)
    else:
        loss, frac = 0.5 * err, torch.zeros(())
    agg = AGGREGATIONS.get(aggregation)(loss, loss_mask, norm_constant=norm_constant)
    return LossOutput(loss=agg, stats={"vf_clip_frac": frac.detach()})


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 − Var(R − V) / Var(R) over masked tokens: 1 is a perfect critic, 0 no better than a constant."""
    n = mask.sum().clamp(min=1.0)
    mean_r = (returns * mask).sum() / n
    var_r = (((returns - mean_r) * mask) ** 2).sum() / n
    diff = (returns - values) * mask
    var_d = ((diff - diff.sum() / n) * mask).pow(2).sum() / n
    return 1.0 - var_d / var_r.clamp(min=1e-8)
