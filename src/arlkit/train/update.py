"""One policy update on a rollout batch: epochs × mini-batches of PPO-style steps, micro-batched forwards."""

from __future__ import annotations

from collections import defaultdict

import torch

from arlkit.algos.kl import KL_ESTIMATORS
from arlkit.algos.losses import AGGREGATIONS, POLICY_LOSSES, masked_mean
from arlkit.config import AlgoConfig
from arlkit.models.forward import token_logprobs
from arlkit.models.loading import Policy
from arlkit.trajectory import Batch


@torch.no_grad()
def _logprobs(model: torch.nn.Module, batch: Batch, temperature: float, micro: int) -> torch.Tensor:
    """(B, T) token logprobs, computed micro-batch by micro-batch."""
    out = torch.zeros_like(batch.rollout_logprobs)
    for s in range(0, batch.input_ids.shape[0], micro):
        mb = batch.select(torch.arange(s, min(s + micro, batch.input_ids.shape[0])))
        lp = token_logprobs(model, mb.input_ids, mb.attention_mask, temperature).logprobs
        out[s : s + lp.shape[0], : lp.shape[1]] = lp.float().cpu()
    return out


def policy_update(
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    batch: Batch,
    advantages: torch.Tensor,
    algo: AlgoConfig,
    temperature: float,
    generator: torch.Generator,
) -> dict[str, float]:
    """Update `policy` in place; returns mean statistics (bare names; the loop adds the prefix).

    batch: on CPU; advantages: (B, T), zero outside loss_mask. With one epoch and one mini-batch the update is
    on-policy and π_old is the current policy (ratio 1), so no extra forward is spent on it.
    """
    model, device = policy.model, next(policy.model.parameters()).device
    B = batch.input_ids.shape[0]
    on_policy = algo.epochs == 1 and algo.mini_batches == 1
    old_lp = None if on_policy else _logprobs(model, batch, temperature, algo.micro_batch_size)
    ref_lp = None
    if algo.kl_coef > 0:
        with policy.reference() as ref:
            ref_lp = _logprobs(ref, batch, temperature, algo.micro_batch_size)
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    model.train()
    for _ in range(algo.epochs):
        perm = torch.randperm(B, generator=generator)
        for mini in perm.chunk(algo.mini_batches):
            optimizer.zero_grad(set_to_none=True)
            n_tokens = batch.loss_mask[mini].sum().clamp(min=1.0).to(device)
            for micro in mini.split(algo.micro_batch_size):
                stats = _micro_step(
                    policy,
                    batch,
                    micro,
                    advantages,
                    old_lp,
                    ref_lp,
                    algo,
                    temperature,
                    device,
                    n_tokens,
                    len(mini),
                )
                for k, v in stats.items():
                    sums[k] += v
                    counts[k] += 1
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.trainable_parameters(), algo.grad_clip)
            if torch.isfinite(grad_norm):
                optimizer.step()
            else:
                sums["skipped_updates"] += 1.0
            if scheduler is not None:
                scheduler.step()
            sums["grad_norm"] += float(grad_norm)
            counts["grad_norm"] += 1
    return {k: sums[k] / max(counts.get(k, 1), 1) for k in sums}


def _micro_step(
    policy: Policy,
    batch: Batch,
    rows: torch.Tensor,
    advantages: torch.Tensor,
    old_lp: torch.Tensor | None,
    ref_lp: torch.Tensor | None,
    algo: AlgoConfig,
    temperature: float,
    device: torch.device,
    n_tokens: torch.Tensor,
    n_rows: int,
) -> dict[str, float]:
    """Forward + backward of one micro-batch; its loss is weighted by its share of the mini-batch's tokens so
    that accumulated gradients equal those of the whole mini-batch (token_mean aggregation)."""
    mb = batch.select(rows).to(device)
    width = mb.input_ids.shape[1]
    adv = advantages[rows][:, :width].to(device)
    out = token_logprobs(policy.model, mb.input_ids, mb.attention_mask, temperature, with_entropy=True)
    lp, mask = out.logprobs, mb.loss_mask
    old = lp.detach() if old_lp is None else old_lp[rows][:, :width].to(device)
    loss_fn = POLICY_LOSSES.get(algo.policy_loss)
    res = loss_fn(
        lp,
        old,
        adv,
        mask,
        clip_low=algo.clip_low,
        clip_high=algo.clip_high,
        dual_clip=algo.dual_clip,
        aggregation=algo.aggregation,
    )
    loss = res.loss
    stats = {k: float(v) for k, v in res.stats.items()}
    if ref_lp is not None:
        kl = KL_ESTIMATORS.get(algo.kl_estimator)(lp, ref_lp[rows][:, :width].to(device))
        kl_loss = AGGREGATIONS.get(algo.aggregation)(kl, mask)
        loss = loss + algo.kl_coef * kl_loss
        stats["kl"] = float(kl_loss.detach())
    # token_mean averages over the mini-batch's tokens, the sequence aggregations over its rows
    weight = mask.sum() / n_tokens if algo.aggregation == "token_mean" else rows.numel() / n_rows
    (loss * weight).backward()
    with torch.no_grad():
        stats["pg_loss"] = float(res.loss)
        stats["entropy"] = float(masked_mean(out.entropies, mask))
        stats["logprob_diff"] = float(masked_mean((lp.detach() - mb.rollout_logprobs).abs(), mask))
    return stats
