"""Per-token log-probabilities, entropies and (optionally) hidden states from a causal LM forward.

Outputs are aligned to tokens: entry t is about token t, predicted from c_<t (entry 0 is 0). This is the
convention of `arlkit.trajectory.Batch`; a value V at entry t is likewise V(c_<t).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from arlkit.models.head import DEFAULT_CHUNK, next_token_stats
from arlkit.models.routing import routing


@dataclass(frozen=True)
class TokenStats:
    logprobs: torch.Tensor  # (B, T)
    entropies: torch.Tensor | None  # (B, T), or None when not asked for
    hidden: torch.Tensor | None = None  # (B, T, H) last decoder layer output at each position, if asked for


def token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    with_hidden: bool = False,
    routes: torch.Tensor | None = None,
    chunk: int | None = DEFAULT_CHUNK,
) -> TokenStats:
    """log π(c_t | c_<t) of each token under softmax(logits / temperature). input_ids: (B, T).

    `routes` (B, T): the adapter/model of each position for a role-routed policy (models/routing.py).
    `chunk`: tokens per output-head chunk (models/head.py); None: full logits at once.
    """
    pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    with routing(model, None if routes is None else routes.to(input_ids.device)):
        out = next_token_stats(
            model,
            input_ids,
            temperature,
            with_entropy,
            with_hidden,
            chunk,
            attention_mask=attention_mask,
            position_ids=pos,
        )
    zero = out.logprobs.new_zeros((input_ids.shape[0], 1))
    ent = None if out.entropies is None else torch.cat([zero, out.entropies], dim=1)
    return TokenStats(logprobs=torch.cat([zero, out.logprobs], dim=1), entropies=ent, hidden=out.hidden)


def shift_values(per_position: torch.Tensor) -> torch.Tensor:
    """(B, T) value read at each position -> (B, T) aligned: entry t = the value at position t−1 = V(c_<t)."""
    return torch.cat([per_position.new_zeros((per_position.shape[0], 1)), per_position[:, :-1]], dim=1)
