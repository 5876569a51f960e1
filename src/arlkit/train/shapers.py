"""Per-micro-batch advantage shapers: transforms that need the trainer's own forward (current logprobs and
entropies), so they run inside the update, after the forward and before the loss. Composable: the update
applies every configured shaper in turn.

- TAO-RL entropy shaping (arXiv 2606.03762): Ã = A·(1 + α·z(H)) on post-tool tokens, z over the micro-batch.
- APPO procedure-level scaling (arXiv 2606.12384, after FIPO): Ã = A·(1 + f(future KL)), and sequences with
  more than one dual-clipped negative token leave the micro-batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from arlkit.algos.appo import future_kl_scaling
from arlkit.algos.tao import entropy_shaping


@dataclass(frozen=True)
class MicroBatch:
    """What a shaper sees of one micro-batch; every tensor is (b, t) on the training device, detached."""

    rows: torch.Tensor  # (b,) indices of the micro-batch's rows in the step's batch
    advantages: torch.Tensor
    loss_mask: torch.Tensor
    logprobs: torch.Tensor  # current policy
    old_logprobs: torch.Tensor  # π_old (the current policy itself when on-policy)
    entropies: torch.Tensor


@dataclass(frozen=True)
class Shaped:
    advantages: torch.Tensor
    loss_mask: torch.Tensor
    stats: dict[str, float]  # full metric names (e.g. "tao/shaped_token_share")


class Shaper(Protocol):
    def __call__(self, mb: MicroBatch) -> Shaped: ...


@dataclass(frozen=True)
class TaoEntropyShaper:
    post_tool: torch.Tensor  # (B, T) of the whole step's batch, on CPU
    alpha: float = 0.01
    tool_aware_only: bool = True
    fallback_all: bool = False  # TAO-RL's released code: no post-tool token in the micro-batch shapes all

    def __call__(self, mb: MicroBatch) -> Shaped:
        t = mb.advantages.shape[1]
        post = self.post_tool[mb.rows][:, :t].to(mb.advantages.device)
        valid = (mb.loss_mask > 0).float()
        adv = entropy_shaping(
            mb.advantages,
            mb.entropies,
            valid,
            post,
            alpha=self.alpha,
            tool_aware_only=self.tool_aware_only,
            fallback_all=self.fallback_all,
        )
        scope = post if self.tool_aware_only else valid
        if self.fallback_all and float((scope * valid).sum()) == 0:
            scope = valid
        n = valid.sum().clamp(min=1.0)
        stats = {
            "tao/shaped_token_share": float((scope * valid).sum() / n),
            "tao/mean_abs_shift": float(((adv - mb.advantages).abs() * valid).sum() / n),
        }
        return Shaped(adv, mb.loss_mask, stats)


@dataclass(frozen=True)
class FutureKLShaper:
    gamma: float = 2 ** (-1 / 64)
    f_max: float = 1.2
    dual_clip: float = 3.0
    neg_after_clip: bool = False  # APPO's released code: f ≡ 1 on A < 0 tokens with ratio > 6

    def __call__(self, mb: MicroBatch) -> Shaped:
        res = future_kl_scaling(
            mb.advantages,
            mb.logprobs,
            mb.old_logprobs,
            (mb.loss_mask > 0).float(),
            gamma=self.gamma,
            f_max=self.f_max,
            dual_clip=self.dual_clip,
            neg_after_clip=self.neg_after_clip,
        )
        mask = mb.loss_mask * res.row_keep[:, None].float()
        valid = (mb.loss_mask > 0).float()
        stats = {
            "appo/future_kl_f_mean": float((res.f * valid).sum() / valid.sum().clamp(min=1.0)),
            "appo/dropped_dual_clip_rows": float((~res.row_keep).sum()),
        }
        return Shaped(res.advantages, mask, stats)
