"""APPO: Agentic Procedural Policy Optimization (arXiv 2606.12384, METHODS.md §5) — the tensor parts.

Branching scores and branch-point selection on initial rollouts, dual-group advantages with branch-to-prefix
credit, reward scaling, and procedure-level ("future KL", after FIPO arXiv 2603.19835) advantage scaling.
Shapes: B trajectories, T tokens. Token distances (in discounts and decays) count generated tokens only,
the time axis of `algos/returns.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from arlkit.algos.advantages import group_stats
from arlkit.algos.returns import discounted_returns

DEGENERATE_TOL = 1e-6  # |Ω − 1| below this everywhere: one policy snapshot, Ω carries no information


def row_zscore(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """z-score of x within each row over its masked entries (population std); 0 where the std is 0."""
    n = mask.sum(-1, keepdim=True).clamp(min=1.0)
    mean = (x * mask).sum(-1, keepdim=True) / n
    std = (((x - mean) * mask) ** 2).sum(-1, keepdim=True).div(n).sqrt()
    return torch.where(std > 0, (x - mean) / std.clamp(min=1e-12), torch.zeros_like(x)) * mask


def omega(
    cur_logprobs: torch.Tensor,
    rollout_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float = 1.0,
    clip: float = 0.2,
) -> torch.Tensor:
    """Ω_t = clip(exp(Σ_{j≥t} γ^{j−t} (log π_cur(c_j) − log π_rollout(c_j))), 1 − clip, 1 + clip). (B, T)."""
    diff = (cur_logprobs - rollout_logprobs) * mask
    acc = discounted_returns(diff, mask > 0, None, gamma, "token")
    return acc.clamp(max=20.0).exp().clamp(1.0 - clip, 1.0 + clip) * mask


@dataclass(frozen=True)
class BranchScores:
    score: torch.Tensor  # (B, T) BS_t = z(H)·z(Ω), or z(H) when Ω is degenerate; 0 off-mask
    candidates: torch.Tensor  # (B, T) bool: z(H) > 0, z(Ω) > 0 (unless degenerate), and allowed by the caller
    omega_degenerate: bool  # Ω ≡ 1: fell back to entropy alone


def branching_scores(
    entropies: torch.Tensor, omega_t: torch.Tensor, mask: torch.Tensor, allowed: torch.Tensor
) -> BranchScores:
    """APPO's branching score per generated token, z-scores within each rollout.

    `allowed` (B, T) bool excludes what the caller rules out (whitespace/punctuation tokens, a turn's stop
    token). With a single policy snapshot π_cur = π_rollout, Ω ≡ 1 and z(Ω) ≡ 0: the score falls back to
    z(H) alone and `omega_degenerate` says so (logged as `appo/omega_degenerate`).
    """
    z_h = row_zscore(entropies, mask)
    degenerate = bool(((omega_t - 1.0).abs() * mask).max() < DEGENERATE_TOL)
    if degenerate:
        score, cand = z_h, z_h > 0
    else:
        z_o = row_zscore(omega_t, mask)
        score, cand = z_h * z_o, (z_h > 0) & (z_o > 0)
    return BranchScores(score * mask, cand & allowed & (mask > 0), degenerate)


def select_branch_points(
    scores: BranchScores, group_index: torch.Tensor, budget: int
) -> list[tuple[int, int, float]]:
    """The top-`budget` candidates of each group (prompt) across its initial rollouts, as (row, position,
    score) sorted by group then score (best first). Ties go to the lower row, then the earlier position."""
    picks: list[tuple[int, int, float]] = []
    for g in group_index.unique().tolist():
        rows = (group_index == g).nonzero().flatten()
        cand = scores.candidates[rows].nonzero()  # (N, 2): index into rows, position
        vals = scores.score[rows][cand[:, 0], cand[:, 1]]
        order = sorted(
            range(len(vals)), key=lambda i: (-float(vals[i]), int(rows[cand[i, 0]]), int(cand[i, 1]))
        )
        picks += [(int(rows[cand[i, 0]]), int(cand[i, 1]), float(vals[i])) for i in order[:budget]]
    return picks


@dataclass(frozen=True)
class DualGroupAdvantages:
    advantages: torch.Tensor  # (B, T) for all rows (initial and branch); 0 on branch rows' tokens
    branch_advantages: torch.Tensor  # (N_branch,) each branch's GRPO advantage within its branch group
    credit: torch.Tensor  # (B, T) the branch credit added to initial rows' prefix tokens


def dual_group_advantages(
    scores: torch.Tensor,
    group_index: torch.Tensor,
    is_branch: torch.Tensor,
    parent: torch.Tensor,
    branch_pos: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    eps: float = 1e-6,
    population_std: bool = False,
) -> DualGroupAdvantages:
    """APPO's credit. scores, group_index, is_branch, parent, branch_pos: (B,); loss_mask: (B, T).

    Initial rollouts are GRPO-normalised among the initial rollouts of their prompt, branches among the
    branches of their prompt (two separate groups per prompt). Branch rows take no loss. Each initial
    rollout's prefix token p gets the mean advantage of its branches whose prefix contains p (branch_pos ≥ p)
    added to its own advantage (with one branch point this is "the mean advantage of the rollout's
    branches on its prefix tokens ≤ t").

    The std is GRPO's unbiased one (the paper says "GRPO-normalised"); the authors' released code
    (`compute_appo_advantage`) divides by the population std, `population_std=True` — at n = 8 ours are
    √(7/8) ≈ 0.935 times its advantages.
    """
    B, T = loss_mask.shape
    dual_group = group_index * 2 + is_branch.long()  # (B,) initial and branch rows of a prompt apart
    dense = torch.unique(dual_group, return_inverse=True)[1]
    mean, std = group_stats(scores, dense, unbiased=not population_std)
    adv_row = (scores - mean) / (std + eps)
    credit_sum = torch.zeros(B, T)
    credit_n = torch.zeros(B, T)
    pos = torch.arange(T)
    for b in is_branch.nonzero().flatten().tolist():
        p, t = int(parent[b]), int(branch_pos[b])
        prefix = (pos <= t).float()
        credit_sum[p] += adv_row[b] * prefix
        credit_n[p] += prefix
    credit = torch.where(credit_n > 0, credit_sum / credit_n.clamp(min=1), torch.zeros(B, T)) * loss_mask
    own = adv_row[:, None] * loss_mask * (~is_branch).float()[:, None]
    return DualGroupAdvantages(own + credit, adv_row[is_branch], credit)


def reward_scaling(
    token_rewards: torch.Tensor,
    loss_mask: torch.Tensor,
    branch_points: list[tuple[int, int, float]],
    *,
    decay: float = 0.9,
) -> torch.Tensor:
    """M_t = 1 + (BS/BS_max)·decay^{t_b − t} for prefix tokens t ≤ t_b of a branched rollout, averaged over
    the rollout's branches whose prefix contains t; token rewards are multiplied by M. (B, T) -> (B, T).

    branch_points: (row, t_b, BS) of every branch. A no-op when only the final token carries reward (it lies
    after every branch point); it matters for process rewards. t_b − t counts generated tokens.
    """
    if not branch_points:
        return token_rewards
    bs_max = max(abs(s) for _, _, s in branch_points) or 1.0
    steps = loss_mask.cumsum(-1)  # generated-token index of each position
    m_sum = torch.zeros_like(token_rewards)
    m_n = torch.zeros_like(token_rewards)
    pos = torch.arange(token_rewards.shape[1])
    for row, t_b, bs in branch_points:
        prefix = (pos <= t_b).float()
        dist = (steps[row, t_b] - steps[row]).clamp(min=0)
        m_sum[row] += (1.0 + (bs / bs_max) * decay**dist) * prefix
        m_n[row] += prefix
    scale = torch.where(m_n > 0, m_sum / m_n.clamp(min=1), torch.ones_like(m_sum))
    return token_rewards * scale


@dataclass(frozen=True)
class FutureKLResult:
    advantages: torch.Tensor  # (B, T) Ã = A·(1 + f)
    row_keep: torch.Tensor  # (B,) bool: False for sequences with more than one dual-clipped negative token
    f: torch.Tensor  # (B, T) the factor f_t


def future_kl_scaling(
    advantages: torch.Tensor,
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float = 2 ** (-1 / 64),
    f_max: float = 1.2,
    exclude_above: float = math.log(3.0),
    neg_ratio: float = 6.0,
    neg_range: tuple[float, float] = (0.8, 1.0),
    dual_clip: float = 3.0,
    neg_after_clip: bool = False,
) -> FutureKLResult:
    """Procedure-level advantage scaling ("future KL", FIPO arXiv 2603.19835, as APPO uses it).

    Δ_k = log π_θ(c_k) − log π_old(c_k) (detached); tokens with Δ_k > log 3 are left out of the sum;
    FutureKL_t = Σ_{k≥t} γ^{k−t} Δ_k; f_t = clip(exp(FutureKL_t), 1, f_max), except for A < 0 with ratio > 6
    where f_t = clip(exp(FutureKL_t), 0.8, 1); Ã_t = A_t·(1 + f_t). Sequences with more than one
    dual-clipped negative token (A < 0, ratio > dual_clip) are dropped. All (B, T).

    `neg_after_clip=True` is the authors' released code (`compute_policy_loss_future_kl`): it clips every f to
    [1, f_max] first and then the A < 0, ratio > 6 tokens to [0.8, 1], so those end at f ≡ 1; the default
    applies [0.8, 1] to the raw exp(FutureKL), as the paper's text reads.

    Note the literal formula: on policy (Δ ≡ 0) f ≡ 1 and Ã = 2A — a uniform scale, as METHODS.md writes it.
    """
    delta = (logprobs.detach() - old_logprobs) * mask
    kept = torch.where(delta > exclude_above, torch.zeros_like(delta), delta)
    future = discounted_returns(kept, mask > 0, None, gamma, "token")
    e = future.clamp(max=20.0).exp()
    ratio = delta.clamp(max=20.0).exp()
    neg_big = (advantages < 0) & (ratio > neg_ratio)
    clipped = e.clamp(1.0, f_max)
    f = torch.where(neg_big, (clipped if neg_after_clip else e).clamp(*neg_range), clipped)
    dual_clipped = ((advantages < 0) & (ratio > dual_clip) & (mask > 0)).sum(-1)
    return FutureKLResult(advantages * (1.0 + f) * mask, dual_clipped <= 1, f * mask)
