"""One actor/critic update on a rollout batch: epochs × mini-batches, micro-batched forwards with gradient
accumulation, gradient clipping, and a skipped step (counted) when gradients are not finite."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from arlkit.algos.correction import CORRECTIONS, Correction, CorrectionParams
from arlkit.algos.kl import KL_ESTIMATORS
from arlkit.algos.losses import AGGREGATIONS, POLICY_LOSSES, explained_variance, masked_mean, value_loss
from arlkit.config import AlgoConfig, CriticConfig
from arlkit.models.forward import TokenStats
from arlkit.models.loading import Policy, policy_routes
from arlkit.models.packing import MicroBatching
from arlkit.models.routing import adapter_parameters, routes_from_roles, token_adapters
from arlkit.train.fsdp import copy_to_rollout, empty_backward, full
from arlkit.train.shapers import MicroBatch, Shaper
from arlkit.trajectory import Batch

if TYPE_CHECKING:
    from arlkit.train.distributed import GradSync

# losses whose non-finite value in any micro-batch skips the mini-batch's optimiser steps (train/guards.py)
LOSS_STATS = ("pg_loss", "kl", "critic:value_loss")


@dataclass(frozen=True)
class UpdateBatch:
    """A collated batch and everything computed for it before the update. All (B, T) unless noted."""

    batch: Batch
    advantages: torch.Tensor  # 0 outside loss_mask
    returns: torch.Tensor | None = None  # value targets (critic)
    old_logprobs: torch.Tensor | None = None  # π_old; None: on-policy, the current policy is π_old
    ref_logprobs: torch.Tensor | None = None  # for a KL loss term
    old_values: torch.Tensor | None = None  # critic values at rollout time (value clipping)
    shapers: tuple[Shaper, ...] = ()  # per-micro-batch advantage transforms (TAO-RL, APPO), in order


@dataclass(frozen=True)
class Optimisers:
    actor: torch.optim.Optimizer
    actor_schedule: torch.optim.lr_scheduler.LRScheduler
    critic: torch.optim.Optimizer | None = None  # a separate critic's
    critic_schedule: torch.optim.lr_scheduler.LRScheduler | None = None


@dataclass(frozen=True)
class UpdateStats:
    actor: dict[str, float]  # bare names; the loop adds "actor/"
    critic: dict[str, float]  # bare names; the loop adds "critic/"


def _chunks(batch: Batch, micro: MicroBatching) -> list[torch.Tensor]:
    return micro.split(torch.arange(batch.input_ids.shape[0]), batch.attention_mask)


@torch.no_grad()
def batch_logprobs(
    model: torch.nn.Module,
    batch: Batch,
    temperature: float,
    micro: MicroBatching,
    routing: dict | None = None,
) -> torch.Tensor:
    """(B, T) token logprobs under `model`, computed micro-batch by micro-batch (no gradient). `routing`: the
    settings of a role-routed model (its routes come from the batch's roles)."""
    out = torch.zeros_like(batch.rollout_logprobs)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    for rows in _chunks(batch, micro):
        mb = batch.select(rows).to(device)
        routes = routes_from_roles(mb.roles, routing.get("answer_adapter", "reasoning")) if routing else None
        lp = micro.token_stats(model, mb.input_ids, mb.attention_mask, temperature, routes=routes).logprobs
        out[rows, : lp.shape[1]] = lp.float().cpu()
    model.train(was_training)
    return out


@torch.no_grad()
def batch_values(policy: Policy, batch: Batch, micro: MicroBatching) -> torch.Tensor:
    """(B, T) critic values V(c_<t) (separate critic or value head), micro-batch by micro-batch."""
    out = torch.zeros_like(batch.rollout_logprobs)
    device = next(policy.model.parameters()).device
    for rows in _chunks(batch, micro):
        mb = batch.select(rows).to(device)
        if policy.critic is not None:
            v = micro.critic_values(policy.critic, mb.input_ids, mb.attention_mask)
        else:
            hidden = micro.token_stats(policy.model, mb.input_ids, mb.attention_mask, with_hidden=True).hidden
            v = policy.value_head(hidden)
        out[rows, : v.shape[1]] = v.float().cpu()
    return out


def update(
    policy: Policy,
    opts: Optimisers,
    data: UpdateBatch,
    algo: AlgoConfig,
    critic_cfg: CriticConfig,
    temperature: float,
    generator: torch.Generator,
    norm_constant: float | None = None,
    train_actor: bool = True,
    sync: GradSync | None = None,
) -> UpdateStats:
    """Update the policy (and critic) in place; returns mean statistics over micro-batches.

    Batch tensors are on CPU and moved per micro-batch. `train_actor=False` trains only the critic (PPO
    critic warm-up). Each optimiser step follows one mini-batch; micro-batch losses are weighted by their
    share of the mini-batch so accumulated gradients equal the mini-batch gradient. With `sync` (several
    processes, train/distributed.py) the mini-batch is the union of every rank's: weights are shares of the
    global mini-batch and gradients are summed across ranks before clipping. A rank may hold no rows.
    """
    B = data.batch.input_ids.shape[0]
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    policy.trained.train()
    sharded = sync is not None and sync.dist.fsdp
    for _ in range(algo.epochs):
        perm = torch.randperm(B, generator=generator)
        # ranks must take the same number of optimiser steps: tensor_split always gives `mini_batches` parts
        minis = perm.tensor_split(algo.mini_batches) if sync else perm.chunk(algo.mini_batches)
        for mini in minis:
            opts.actor.zero_grad(set_to_none=True)
            if opts.critic is not None:
                opts.critic.zero_grad(set_to_none=True)
            local = _normaliser(data.batch, mini, algo.aggregation)
            scale = sync.share(local) if sync else 1.0
            finite = True
            chunks = algo.micro_batching.split(mini, data.batch.attention_mask) if len(mini) else []
            for rows in chunks:
                weight = _normaliser(data.batch, rows, algo.aggregation) / max(local, 1.0) * scale
                stats = _micro_step(
                    policy, data, rows, weight, algo, critic_cfg, temperature, norm_constant, train_actor
                )
                finite = finite and all(math.isfinite(stats.get(k, 0.0)) for k in LOSS_STATS)
                for k, v in stats.items():
                    sums[k] += v
                    counts[k] += 1
            if sharded:  # FSDP's collectives need as many forward/backward passes on every rank
                for _ in range(sync.max_count(len(chunks)) - len(chunks)):
                    empty_backward(policy.trained, sync.dist.device)
            if sync:  # a rank's non-finite gradients reach every rank here, so all ranks skip together
                sync.all_reduce(synced_parameters(policy))
            _optimizer_steps(policy, opts, algo, critic_cfg, train_actor, sums, counts, finite)
    if policy.train_model is not None:  # rollouts use the full copy: give it the new weights
        copy_to_rollout(policy.train_model, policy.model)
    means = {k: sums[k] / max(counts.get(k, 1), 1) for k in sums}
    actor = {k: v for k, v in means.items() if not k.startswith("critic:")}
    critic = {k.removeprefix("critic:"): v for k, v in means.items() if k.startswith("critic:")}
    return UpdateStats(actor=actor, critic=critic)


def synced_parameters(policy: Policy) -> list[torch.nn.Parameter]:
    """Every parameter an optimiser steps: the actor's (value head included) and a separate critic's."""
    params = policy.trainable_parameters()
    if policy.critic is not None:
        params += [p for p in policy.critic.parameters() if p.requires_grad]
    return params


def _normaliser(batch: Batch, rows: torch.Tensor, aggregation: str) -> float:
    """What the aggregation divides by over `rows`: generated tokens (token_mean), rows with at least one
    generated token (seq_mean_token_sum, seq_mean_token_mean), or rows. A micro-batch's weight in its
    mini-batch is its normaliser over the mini-batch's, so accumulated gradients equal the mini-batch's."""
    mask = batch.loss_mask[rows]
    if aggregation == "token_mean":
        return float(mask.sum())
    if aggregation in ("seq_mean_token_sum", "seq_mean_token_mean"):
        return float((mask.sum(-1) > 0).sum())
    return float(rows.numel())


def _optimizer_steps(
    policy: Policy,
    opts: Optimisers,
    algo: AlgoConfig,
    critic_cfg: CriticConfig,
    train_actor: bool,
    sums: dict[str, float],
    counts: dict[str, int],
    finite_loss: bool = True,
) -> None:
    """Clip and step each optimiser. A non-finite gradient norm, or a non-finite loss anywhere in the
    mini-batch (`finite_loss` False), skips the step: its gradients are dropped and the skip is counted."""
    pairs = [("", opts.actor, opts.actor_schedule, policy.trainable_parameters(), algo.grad_clip)]
    if opts.critic is not None:
        params = [p for p in policy.critic.parameters() if p.requires_grad]
        pairs.append(("critic:", opts.critic, opts.critic_schedule, params, algo.grad_clip))
    for prefix, opt, sched, params, clip in pairs:
        if not prefix and not train_actor and policy.value_head is None:
            continue
        grad_norm = full(torch.nn.utils.clip_grad_norm_(params, clip))  # a DTensor under FSDP
        if finite_loss and torch.isfinite(grad_norm):
            opt.step()
        else:
            opt.zero_grad(set_to_none=True)
            sums[f"{prefix}skipped_updates"] += 1.0
        if sched is not None:
            sched.step()
        sums[f"{prefix}grad_norm"] += float(grad_norm)
        counts[f"{prefix}grad_norm"] += 1


def _micro_step(
    policy: Policy,
    data: UpdateBatch,
    rows: torch.Tensor,
    weight: float,
    algo: AlgoConfig,
    critic_cfg: CriticConfig,
    temperature: float,
    norm_constant: float | None,
    train_actor: bool,
) -> dict[str, float]:
    """Forward + backward of one micro-batch: actor loss (+ KL, entropy bonus, value-head loss) and, for a
    separate critic, its value loss."""
    device = next(policy.model.parameters()).device
    mb = data.batch.select(rows).to(device)
    width = mb.input_ids.shape[1]

    def cut(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x[rows][:, :width].to(device)

    stats: dict[str, float] = {}
    loss = torch.zeros((), device=device)
    with_head = policy.value_head is not None
    if train_actor or with_head:
        out = algo.micro_batching.token_stats(
            policy.trained,
            mb.input_ids,
            mb.attention_mask,
            temperature,
            with_entropy=True,
            with_hidden=with_head,
            routes=policy_routes(policy, mb.roles),
        )
        if train_actor:
            loss, stats = _actor_loss(out.logprobs, out.entropies, rows, mb, data, cut, algo, norm_constant)
            if _isolated(policy):  # DART: each adapter takes the gradient of its own role's tokens only
                _isolated_backward(policy, out, rows, mb, data, cut, algo, norm_constant, weight)
                return stats
        if with_head:
            # during critic warm-up the shared backbone must not move: only the head learns
            hidden = out.hidden if train_actor else out.hidden.detach()
            v_loss, v_stats = _value_loss(policy.value_head(hidden), mb, data, cut, critic_cfg)
            loss = loss + critic_cfg.vf_coef * v_loss
            stats.update({f"critic:{k}": v for k, v in v_stats.items()})
        (loss * weight).backward()
    if policy.critic is not None:
        values = algo.micro_batching.critic_values(policy.critic, mb.input_ids, mb.attention_mask)
        v_loss, v_stats = _value_loss(values, mb, data, cut, critic_cfg)
        (critic_cfg.vf_coef * v_loss * weight).backward()
        stats.update({f"critic:{k}": v for k, v in v_stats.items()})
    return stats


Cut = Callable[[torch.Tensor | None], torch.Tensor | None]


def _isolated(policy: Policy) -> bool:
    r = policy.routing
    return r is not None and r["kind"] == "dart" and r.get("gradients", "isolated") == "isolated"


def _isolated_backward(
    policy: Policy,
    out: TokenStats,
    rows: torch.Tensor,
    mb: Batch,
    data: UpdateBatch,
    cut: Cut,
    algo: AlgoConfig,
    norm_constant: float | None,
    weight: float,
) -> None:
    """DART's decoupled updates: the loss splits exactly by token into one part per adapter (the tokens whose
    logits that adapter computed); each adapter's gradient is that of its own part. One backward of the whole
    loss would also carry an action token's loss into the reasoning adapter through attention over earlier
    positions the reasoning adapter computed, and the reverse."""
    owner = token_adapters(mb.roles, policy.routing.get("answer_adapter", "reasoning"))  # (b, t)
    groups = adapter_parameters(policy.model)
    for u, params in enumerate(groups):
        part, _ = _actor_loss(
            out.logprobs, out.entropies, rows, mb, data, cut, algo, norm_constant, select=(owner == u).float()
        )
        grads = torch.autograd.grad(
            part * weight, params, retain_graph=u + 1 < len(groups), allow_unused=True
        )
        for p, g in zip(params, grads, strict=True):
            if g is not None:
                p.grad = g if p.grad is None else p.grad + g


def _actor_loss(
    logprobs: torch.Tensor,
    entropies: torch.Tensor,
    rows: torch.Tensor,
    mb: Batch,
    data: UpdateBatch,
    cut: Cut,
    algo: AlgoConfig,
    norm_constant: float | None,
    select: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The actor loss of a micro-batch. `select` (b, t) keeps the loss of some tokens only, with the
    aggregation's normaliser unchanged, so the losses of a partition of the tokens add up to the whole."""
    mask = mb.loss_mask
    old = logprobs.detach() if data.old_logprobs is None else cut(data.old_logprobs)
    adv = cut(data.advantages)
    shaper_stats: dict[str, float] = {}
    for shaper in data.shapers:
        shaped = shaper(MicroBatch(rows, adv, mask, logprobs.detach(), old, entropies.detach()))
        adv, mask = shaped.advantages, shaped.loss_mask
        shaper_stats.update(shaped.stats)
    keep = torch.ones_like(mask) if select is None else select
    adv = adv * keep
    corr_stats: dict[str, float] = {}
    # w ≥ 0 on the advantage scales each token's policy loss by w; "auto" unresolved (an AlgoConfig built
    # outside a Config, which resolves it at load) means none
    if algo.rollout_correction not in ("none", "auto"):
        corr = _rollout_correction(old, mb, algo)
        adv = adv * corr.weights
        corr_stats = {f"rollout_corr/{k}": float(v) for k, v in corr.stats.items()}
    res = POLICY_LOSSES.get(algo.policy_loss)(
        logprobs,
        old,
        adv,
        mask,
        clip_low=algo.clip_low,
        clip_high=algo.clip_high,
        dual_clip=algo.dual_clip,
        aggregation=algo.aggregation,
        norm_constant=norm_constant,
    )
    agg = AGGREGATIONS.get(algo.aggregation)
    loss = res.loss
    stats = {k: float(v) for k, v in res.stats.items()} | shaper_stats | corr_stats
    if data.ref_logprobs is not None:
        kl_tokens = KL_ESTIMATORS.get(algo.kl_estimator)(logprobs, cut(data.ref_logprobs)) * keep
        kl = agg(kl_tokens, mask, norm_constant=norm_constant)
        loss = loss + algo.kl_coef * kl
        stats["kl"] = float(kl.detach())
    entropy = masked_mean(entropies, mask)
    if algo.entropy_coef > 0:
        loss = loss - algo.entropy_coef * masked_mean(entropies * keep, mask)
    stats["pg_loss"] = float(res.loss.detach())
    stats["entropy"] = float(entropy.detach())
    stats["logprob_diff"] = float(masked_mean((logprobs.detach() - mb.rollout_logprobs).abs(), mask))
    return loss, stats


def _rollout_correction(old: torch.Tensor, mb: Batch, algo: AlgoConfig) -> Correction:
    """TIS/MIS/IcePop weights from π_old (the trainer's recompute, or the current policy on-policy) against the
    sampler's recorded logprobs, over the generated tokens (the batch's loss mask, before any shaper)."""
    params = CorrectionParams(
        cap=algo.rollout_corr_cap,
        lower=algo.rollout_corr_lower,
        upper=algo.rollout_corr_upper,
        seq_ratio=algo.rollout_corr_seq_ratio,
    )
    return CORRECTIONS.get(algo.rollout_correction)(old, mb.rollout_logprobs, mb.loss_mask, params)


def _value_loss(
    values: torch.Tensor, mb: Batch, data: UpdateBatch, cut: Cut, critic_cfg: CriticConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    mask = mb.loss_mask
    old = cut(data.old_values)
    ret = cut(data.returns)
    res = value_loss(
        values, values.detach() if old is None else old, ret, mask, clip_range=critic_cfg.value_clip
    )
    stats = {k: float(v) for k, v in res.stats.items()}
    with torch.no_grad():
        stats["value_loss"] = float(res.loss)
        stats["values_mean"] = float(masked_mean(values, mask))
        stats["explained_variance"] = float(explained_variance(values, ret, mask))
    return res.loss, stats
