"""Per-token log-probabilities, entropies and (optionally) hidden states from a causal LM forward.

Outputs are aligned to tokens: entry t is about token t, predicted from c_<t (entry 0 is 0). This is the
convention of `arlkit.trajectory.Batch`; a value V at entry t is likewise V(c_<t).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

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
) -> TokenStats:
    """log π(c_t | c_<t) of each token under softmax(logits / temperature). input_ids: (B, T).

    `routes` (B, T): the adapter/model of each position for a role-routed policy (models/routing.py).
    """
    pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    with routing(model, None if routes is None else routes.to(input_ids.device)):
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=pos,
            use_cache=False,
            output_hidden_states=with_hidden,
        )
    logits = out.logits[:, :-1].float()  # (B, T-1, V)
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    logp_all = F.log_softmax(logits, dim=-1)  # (B, T-1, V)
    lp = logp_all.gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
    zero = lp.new_zeros((lp.shape[0], 1))
    ent = None
    if with_entropy:
        ent = torch.cat([zero, -(logp_all.exp() * logp_all).sum(-1)], dim=1)
    hidden = out.hidden_states[-1] if with_hidden else None
    return TokenStats(logprobs=torch.cat([zero, lp], dim=1), entropies=ent, hidden=hidden)


def shift_values(per_position: torch.Tensor) -> torch.Tensor:
    """(B, T) value read at each position -> (B, T) aligned: entry t = the value at position t−1 = V(c_<t)."""
    return torch.cat([per_position.new_zeros((per_position.shape[0], 1)), per_position[:, :-1]], dim=1)
