"""The output head applied chunk by chunk: next-token log-probabilities and entropies without full logits.

A causal LM's logits for R rows of W tokens are (R, W, V) floats; with a 49k-152k vocabulary they, the
log-softmax and the entropy's p·log p are most of a training step's memory (SmolLM2-135M at 8,192 tokens per
micro-batch: 1.6 GB per (T, V) float32 tensor, several of them kept by autograd for backward). Instead the
decoder body gives the last hidden states (R, W, H), and the head + log-softmax + gather (+ entropy) run on
`chunk` tokens at a time, each under `torch.utils.checkpoint`, so only one chunk's (chunk, V) tensors exist at
once, in the forward and again when backward recomputes that chunk (Liger-Kernel's and torchtune's chunked
cross-entropy do the same). Values are those of the full path: the same formula on the same rows.

The chunked path applies when logits = head(last hidden state) exactly, with `head` a plain Linear
(`chunkable_head`); otherwise (2-Agent's per-position choice between two models' logits, a LoRA-wrapped or
sharded head, a post-head scale or soft-cap) `next_token_stats` computes the full logits as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from arlkit.models.routing import TwoAgentModel

DEFAULT_CHUNK = 1024  # tokens per head chunk: (1024, 49152) float32 = 0.2 GB per tensor of the chunk

# config fields of architectures whose logits are not head(hidden) alone (Gemma 2/3, Cohere, Granite)
_POST_HEAD_FIELDS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


@dataclass(frozen=True)
class NextTokenStats:
    """Statistics of predicting token t+1 at each position t of (R, W) input rows."""

    logprobs: torch.Tensor  # (R, W-1): log π(ids[:, t+1] | ids[:, ≤t])
    entropies: torch.Tensor | None  # (R, W-1), or None when not asked for
    hidden: torch.Tensor | None  # (R, W, H) last hidden state (after the final norm), if asked for


def chunkable_head(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The output head when logits = head(decoder body's last hidden state) exactly; None when not."""
    if isinstance(model, TwoAgentModel):
        return None  # each position's logits come from one of two models: the full path handles the choice
    try:
        from torch.distributed.fsdp import FSDPModule

        if isinstance(model, FSDPModule):
            return None  # a sharded head's weight is gathered only inside the root module's forward
    except ImportError:  # pragma: no cover - torch built without distributed
        pass
    config = getattr(model, "config", None)
    if config is None or any(getattr(config, f, None) not in (None, 1.0) for f in _POST_HEAD_FIELDS):
        return None
    head = model.get_output_embeddings()
    if (
        type(head) is not torch.nn.Linear
    ):  # e.g. peft's LoRA Linear on lm_head: unusual, left to the full path
        return None
    body = model.get_decoder()
    return head if body is not model and body is not None else None


def next_token_stats(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    with_hidden: bool = False,
    chunk: int | None = DEFAULT_CHUNK,
    **forward_kwargs: Any,
) -> NextTokenStats:
    """Forward `model` on input_ids (R, W) (plus `forward_kwargs`: attention_mask, position_ids) and the
    log-probability (and entropy) of each next token under softmax(logits / temperature).

    chunk: tokens per head chunk; None computes the full (R, W, V) logits at once (the previous path, kept
    as the baseline of benchmarks/train_step.py and as the fallback where `chunkable_head` says no).
    """
    head = chunkable_head(model) if chunk is not None else None
    targets = input_ids[:, 1:]  # (R, W-1)
    if head is None:
        out = model(input_ids=input_ids, use_cache=False, output_hidden_states=with_hidden, **forward_kwargs)
        lp, ent = _stats(out.logits[:, :-1], targets, temperature, with_entropy)
        return NextTokenStats(lp, ent, out.hidden_states[-1] if with_hidden else None)
    # the body alone: transformers never builds the (R, W, V) logits
    hidden = model.get_decoder()(input_ids=input_ids, use_cache=False, **forward_kwargs).last_hidden_state
    R, W, H = hidden.shape
    flat_h = hidden[:, :-1].reshape(R * (W - 1), H)  # (N, H), N = R·(W-1)
    flat_t = targets.reshape(-1)  # (N,)
    grad = torch.is_grad_enabled() and (flat_h.requires_grad or head.weight.requires_grad)
    lps, ents = [], []
    for h, t in zip(flat_h.split(chunk), flat_t.split(chunk), strict=True):
        fn = lambda h, t: _stats(head(h), t, temperature, with_entropy)  # noqa: E731
        # checkpoint: backward recomputes this chunk's logits instead of autograd keeping them
        lp, ent = checkpoint(fn, h, t, use_reentrant=False) if grad else fn(h, t)
        lps.append(lp)
        ents.append(ent)
    lp = torch.cat(lps).reshape(R, W - 1)
    ent = torch.cat(ents).reshape(R, W - 1) if with_entropy else None
    return NextTokenStats(lp, ent, hidden if with_hidden else None)


def _stats(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """logits (..., V), targets (...) long -> log-probability of each target (...) and entropy (...) or None."""
    logits = logits.float()
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    logp_all = F.log_softmax(logits, dim=-1)  # (..., V)
    lp = logp_all.gather(-1, targets[..., None]).squeeze(-1)
    ent = -(logp_all.exp() * logp_all).sum(-1) if with_entropy else None
    return lp, ent
