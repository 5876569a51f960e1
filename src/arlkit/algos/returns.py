"""Discounted scans over a trajectory's time axis, shared by every return-based advantage estimator.

Agent-R1 (arXiv 2511.14460) "aligned advantages": with `aligned=True` the time axis is the subsequence of
generated tokens only, so the value and return at the last action token of a turn bootstrap from the next
generated token, across the observation the environment inserted. With `aligned=False` every real token is a
time step (observation tokens included, with reward 0 and whatever value the critic gives them): the
ablation of the paper.

Shapes: B trajectories, T tokens.
"""

from __future__ import annotations

from typing import Literal

import torch

DiscountUnit = Literal["token", "turn"]


def time_mask(loss_mask: torch.Tensor, attention_mask: torch.Tensor | None, aligned: bool) -> torch.Tensor:
    """(B, T) bool: the positions that are time steps. Aligned: generated tokens; else every real token."""
    if aligned or attention_mask is None:
        return loss_mask > 0
    return attention_mask > 0


def compact(x: torch.Tensor, steps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move the time steps of each row to the left, in order. x, steps: (B, T) -> (B, T) values, order.

    `order` holds, for each compacted slot, the original column, so `expand` can scatter values back.
    """
    # stable sort on "not a step": steps first (in their order), the rest after
    order = torch.sort((~steps).to(torch.int8), dim=1, stable=True).indices  # (B, T)
    return x.gather(1, order), order


def expand(x: torch.Tensor, order: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """Inverse of `compact`; positions that are not time steps get 0. (B, T) -> (B, T)."""
    out = torch.zeros_like(x).scatter(1, order, x)
    return out * steps


def step_discounts(
    steps: torch.Tensor, turn: torch.Tensor | None, gamma: float, unit: DiscountUnit
) -> torch.Tensor:
    """(B, T) discount from each compacted time step to the next one (0 after the last step of a row).

    unit "token": γ per time step; unit "turn": γ only where the next step belongs to a later turn, so the
    discount runs across turns and not across the tokens of one turn. `steps` and `turn` are compacted.
    """
    B, T = steps.shape
    nxt = torch.zeros_like(steps)
    nxt[:, :-1] = steps[:, 1:]
    if unit == "token":
        d = torch.full((B, T), gamma, dtype=torch.float32)
    else:
        if turn is None:
            raise ValueError("discount unit 'turn' needs the turn index of each token")
        new_turn = torch.zeros((B, T), dtype=torch.bool)
        new_turn[:, :-1] = turn[:, 1:] != turn[:, :-1]
        d = torch.where(new_turn, torch.tensor(gamma), torch.tensor(1.0))
    return d * nxt.float()


def reverse_scan(x: torch.Tensor, discount: torch.Tensor) -> torch.Tensor:
    """out_t = x_t + discount_t · out_{t+1}, scanning right to left. (B, T) -> (B, T)."""
    out = torch.zeros_like(x)
    running = torch.zeros(x.shape[0], dtype=x.dtype)
    for t in range(x.shape[1] - 1, -1, -1):
        running = x[:, t] + discount[:, t] * running
        out[:, t] = running
    return out


def discounted_returns(
    token_rewards: torch.Tensor,
    steps: torch.Tensor,
    turn: torch.Tensor | None,
    gamma: float,
    unit: DiscountUnit,
) -> torch.Tensor:
    """(B, T) return-to-go G_t = Σ_{j ≥ t} Π(discounts) r_j over the time steps; 0 elsewhere."""
    r, order = compact(token_rewards, steps)
    s = steps.gather(1, order)
    tn = turn.gather(1, order) if turn is not None else None
    return expand(reverse_scan(r * s, step_discounts(s, tn, gamma, unit)), order, steps)


def gae(
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    steps: torch.Tensor,
    turn: torch.Tensor | None,
    gamma: float,
    lam: float,
    unit: DiscountUnit,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (arXiv 1506.02438) over the time steps. Returns (A, A + V), (B, T).

    δ_t = r_t + d_t V_{t'} − V_t with t' the next time step (V = 0 after the last), A_t = δ_t + d_t λ A_{t'}.
    """
    r, order = compact(token_rewards, steps)
    v = values.gather(1, order)
    s = steps.gather(1, order)
    d = step_discounts(s, turn.gather(1, order) if turn is not None else None, gamma, unit)
    v = v * s
    v_next = torch.zeros_like(v)
    v_next[:, :-1] = v[:, 1:]
    delta = (r + d * v_next - v) * s
    adv = reverse_scan(delta, d * lam)
    return expand(adv, order, steps), expand(adv + v, order, steps)
