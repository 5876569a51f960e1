"""Supervised fine-tuning on token-level trajectories: cross-entropy on tokens whose loss_mask is 1."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from arlkit.models.packing import MicroBatching
from arlkit.models.precision import autocast
from arlkit.trajectory import Trajectory, collate


@dataclass(frozen=True)
class SFTParams:
    steps: int = 500
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 20
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    bucket: int = 16  # batches drawn from a window of bucket × batch_size examples sorted by length
    # forward tokens per packed micro-batch (gradients accumulated over a batch's micro-batches); None: the
    # whole batch in one padded forward. A 135M model's activations at 32 × 400 tokens need ~18 GB at once
    micro_batch_tokens: int | None = None
    precision: str = "fp32"  # "bf16": forwards under bf16 autocast, float32 weights (models/precision.py)


def bucketed_batches(
    lengths: Sequence[int], batch_size: int, bucket: int, gen: torch.Generator
) -> Iterator[list[int]]:
    """Endless batches of example indices, epoch after epoch without replacement, in an order fixed by `gen`.

    Each window of `bucket × batch_size` shuffled examples is sorted by length and cut into batches, whose
    order is then shuffled: rows of a batch have similar lengths, so little of a padded batch is padding
    (on the toywiki demonstrations about half of a randomly drawn batch was padding).
    """
    while True:
        perm = torch.randperm(len(lengths), generator=gen).tolist()
        for w in range(0, len(perm), batch_size * bucket):
            window = sorted(perm[w : w + batch_size * bucket], key=lambda i: lengths[i])
            batches = [window[i : i + batch_size] for i in range(0, len(window), batch_size)]
            for j in torch.randperm(len(batches), generator=gen).tolist():
                yield batches[j]


def sft(
    model: torch.nn.Module,
    examples: Sequence[Trajectory],
    pad_id: int,
    params: SFTParams,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train `model` in place on `examples` (loss on generated tokens only); returns the loss per step.

    Batches are drawn without replacement, epoch by epoch, length-bucketed, in an order fixed by `params.seed`.
    The loss is the mean over the batch's generated tokens.
    """
    gen = torch.Generator().manual_seed(params.seed)
    batches = bucketed_batches([len(e) for e in examples], params.batch_size, params.bucket, gen)
    opt = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_cosine(params.warmup, params.steps))
    model.train()
    device = next(model.parameters()).device
    losses = []
    for step in range(params.steps):
        batch = collate([examples[i] for i in next(batches)], pad_id)
        n_tokens = batch.loss_mask.sum().clamp(min=1.0)
        opt.zero_grad(set_to_none=True)
        loss = 0.0
        # the trainer's micro-batching: one padded forward of the whole batch, or packed token-budgeted ones
        micro = MicroBatching(
            len(batch.input_ids), params.micro_batch_tokens, params.micro_batch_tokens is not None
        )
        for rows in micro.split(torch.arange(len(batch.input_ids)), batch.attention_mask):
            with autocast(device, params.precision):
                stats = micro.token_stats(model, batch.input_ids[rows], batch.attention_mask[rows])
            part = -(stats.logprobs * batch.loss_mask[rows]).sum() / n_tokens  # the batch mean's share
            part.backward()
            loss += float(part.detach())
        torch.nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip)
        opt.step()
        sched.step()
        losses.append(loss)
        if on_step is not None:
            on_step(step, losses[-1])
    return losses


def _warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    import math

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor
