"""Train–inference mismatch corrections (METHODS.md §9): TIS, sequence-level MIS and IcePop.

The sampler μ that produced the tokens (vLLM, a bf16 copy of the policy, an older policy) is not the trainer's
π_old. With ρ_t = π_old(c_t|c_<t) / μ(c_t|c_<t) — π_old from the trainer's recompute, μ from the logprob the
sampler recorded — each correction returns a per-token weight w_t ≥ 0, detached, that multiplies the
per-token policy-gradient loss. The PPO ratio r_t = π_θ/π_old and its clip are untouched: the weight acts on
top of it ("decoupled" PPO, as verl's rollout_corr decoupled mode and TRL's vllm_importance_sampling do).

- `tis` (Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL"; verl `token_tis`,
  TRL `token_truncate`): w_t = min(ρ_t, C).
- `mis` (verl Seq-MIS `seq_sum_k1`, TRL `sequence_mask`): ρ_seq = Π_t ρ_t over the sequence's generated
  tokens (`seq_ratio="product"`, verl's and TRL's default), or the per-token geometric mean exp(mean_t log ρ_t)
  (`"geometric"`, verl's Geo-RS `seq_mean_k1`, which does not grow with length). A sequence with
  ρ_seq ∉ [lower, upper] gets w = 0 on every token; a kept one gets w = ρ_seq (the masked importance ratio
  1[lower ≤ ρ ≤ upper]·ρ of TRL's MIS).
- `icepop` (Ling team, "IcePop", arXiv 2510.18855): w_t = ρ_t if ρ_t ∈ [α, β] else 0 — M(k) = k inside the
  band, 0 outside.

Zero-weight tokens stay in the aggregation's normaliser: their loss is zero, the other tokens' losses are not
rescaled (TRL multiplies its per-token loss the same way). Because w ≥ 0 and the clipped surrogate is
positively homogeneous in the advantage, −min(r·wA, clip(r)·wA) = w·(−min(r·A, clip(r)·A)), so the caller may
apply w to the advantages instead of the loss.

Shapes: B trajectories, T tokens. `loss_mask`: 1 = generated token that takes loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from arlkit.algos.registry import Registry

SeqRatio = Literal["product", "geometric"]
MAX_LOG_RATIO = 20.0  # exp(20) ≈ 5e8: a far-off token stays finite (verl's SAFETY_BOUND)

CORRECTIONS: Registry = Registry("rollout correction")


@dataclass(frozen=True)
class CorrectionParams:
    cap: float = 2.0  # TIS truncation C (verl rollout_is_threshold 2.0)
    lower: float = 0.5  # MIS / IcePop band: verl seq_is_rs "0.5_2.0", IcePop α = 0.5
    upper: float = 2.0  # β = 2
    seq_ratio: SeqRatio = "product"  # MIS: Π ρ_t (verl, TRL) or the geometric mean (verl Geo-RS)


@dataclass(frozen=True)
class Correction:
    weights: torch.Tensor  # (B, T) detached w_t ≥ 0; 0 outside loss_mask
    stats: dict[str, torch.Tensor]  # bare names; detached scalars


def log_ratio(
    old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, loss_mask: torch.Tensor
) -> torch.Tensor:
    """(B, T) log ρ_t = log π_old − log μ on generated tokens, clamped to ±20; 0 elsewhere."""
    diff = (old_logprobs.detach() - rollout_logprobs).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    return diff * loss_mask


def _mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def _stats(rho: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor, **extra: torch.Tensor) -> dict:
    has = mask > 0
    rho_max = rho.masked_fill(~has, -torch.inf).max() if has.any() else torch.ones(())
    return {
        "rho_mean": _mean(rho, mask),
        "rho_max": rho_max,
        "is_weight_mean": _mean(weights, mask),
        **extra,
    }


@CORRECTIONS.register("tis")
def tis(
    old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, loss_mask: torch.Tensor, p: CorrectionParams
) -> Correction:
    """Token-level truncated IS: w_t = min(ρ_t, cap). `clipped_frac`: share of tokens with ρ_t > cap."""
    rho = log_ratio(old_logprobs, rollout_logprobs, loss_mask).exp()
    w = rho.clamp(max=p.cap) * loss_mask
    return Correction(w, _stats(rho, w, loss_mask, clipped_frac=_mean((rho > p.cap).float(), loss_mask)))


def sequence_ratio(
    old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, loss_mask: torch.Tensor, how: SeqRatio
) -> torch.Tensor:
    """(B,) ρ_seq: exp(Σ_t log ρ_t) ("product") or exp(mean_t log ρ_t) ("geometric"); 1 for an empty row."""
    lr = log_ratio(old_logprobs, rollout_logprobs, loss_mask).sum(-1)  # (B,)
    if how == "geometric":
        lr = lr / loss_mask.sum(-1).clamp(min=1.0)
    return lr.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO).exp()


@CORRECTIONS.register("mis")
def mis(
    old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, loss_mask: torch.Tensor, p: CorrectionParams
) -> Correction:
    """Sequence-level masked IS: w = ρ_seq on every token of a sequence with ρ_seq ∈ [lower, upper], else 0.
    `masked_frac`: share of generated tokens whose sequence was dropped; `seq_masked_frac`: of sequences."""
    rho_seq = sequence_ratio(old_logprobs, rollout_logprobs, loss_mask, p.seq_ratio)  # (B,)
    keep = (rho_seq >= p.lower) & (rho_seq <= p.upper)  # (B,)
    w = (rho_seq * keep)[:, None] * loss_mask  # (B, T)
    rho = rho_seq[:, None].expand_as(loss_mask)
    has = (loss_mask.sum(-1) > 0).float()
    dropped = (~keep).float()
    return Correction(
        w,
        _stats(
            rho,
            w,
            loss_mask,
            masked_frac=_mean(dropped[:, None].expand_as(loss_mask), loss_mask),
            seq_masked_frac=(dropped * has).sum() / has.sum().clamp(min=1.0),
        ),
    )


@CORRECTIONS.register("icepop")
def icepop(
    old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, loss_mask: torch.Tensor, p: CorrectionParams
) -> Correction:
    """IcePop token masking: w_t = ρ_t inside [lower, upper], 0 outside. `masked_frac`: share of tokens dropped."""
    rho = log_ratio(old_logprobs, rollout_logprobs, loss_mask).exp()
    inside = (rho >= p.lower) & (rho <= p.upper)
    w = rho * inside * loss_mask
    return Correction(w, _stats(rho, w, loss_mask, masked_frac=_mean((~inside).float(), loss_mask)))
