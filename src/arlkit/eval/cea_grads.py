"""Per-trajectory, per-role gradients of the policy loss for CEA's gradient-angle analysis (METHODS.md §7).

g_τ^(b) is the gradient of the trainer's own policy loss (the registered `ppo_clip`, token-mean, at the
on-policy point π_old = π, so ratio = 1) on trajectory τ with the loss mask restricted to role-b tokens;
"reasoning" holds REASONING and ANSWER tokens (ANSWER counts as reasoning, METHODS.md §1), "action" holds
ACTION tokens. Advantages are the GRPO advantages of the trajectory's group. Gradients are flattened over the
trainable parameters, or over those whose name matches a regex (a documented subset for large models).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from arlkit.algos.advantages import ADVANTAGES, AdvantageInputs, AdvantageParams
from arlkit.algos.losses import POLICY_LOSSES
from arlkit.errors import ArlkitError
from arlkit.models.forward import token_logprobs
from arlkit.trajectory import Batch, role_mask

ROLE_SETS = {"reasoning": ("reasoning", "answer"), "action": ("action",)}


def grpo_advantages(batch: Batch) -> torch.Tensor:
    """(B, T) GRPO advantages of a collated batch (its groups are the questions)."""
    inputs = AdvantageInputs(
        token_rewards=batch.token_rewards,
        loss_mask=batch.loss_mask,
        group_index=batch.group_index,
        turn=batch.turn,
        attention_mask=batch.attention_mask,
    )
    return ADVANTAGES.get("grpo")(inputs, AdvantageParams()).advantages


def usable_rows(batch: Batch, advantages: torch.Tensor) -> torch.Tensor:
    """(N,) indices of trajectories with a non-zero advantage and tokens of both roles: a zero advantage gives
    a zero gradient (no angle), and a trajectory without a tool call has no action gradient."""
    has = [(role_mask(batch.roles, roles) * batch.loss_mask).sum(-1) > 0 for roles in ROLE_SETS.values()]
    moving = (advantages * batch.loss_mask).abs().sum(-1) > 0
    return torch.nonzero(has[0] & has[1] & moving).flatten()


def selected_parameters(model: torch.nn.Module, pattern: str | None) -> list[tuple[str, torch.nn.Parameter]]:
    """Trainable (name, parameter) pairs, those whose name matches `pattern` when given.

    Raises:
        ArlkitError: the pattern matches no trainable parameter.
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if pattern is not None:
        params = [(n, p) for n, p in params if re.search(pattern, n)]
    if not params:
        raise ArlkitError(f"cea.grad_params {pattern!r} matches no trainable parameter of the model")
    return params


@dataclass(frozen=True)
class RoleGradients:
    reasoning: torch.Tensor  # (N, P) float32 on CPU
    action: torch.Tensor  # (N, P)
    n_params: int  # P


def role_gradients(
    model: torch.nn.Module,
    batch: Batch,
    advantages: torch.Tensor,
    rows: torch.Tensor,
    *,
    temperature: float = 1.0,
    param_pattern: str | None = None,
) -> RoleGradients:
    """Flattened g^(reasoning) and g^(action) of each trajectory in `rows` (one forward, one backward per
    role). batch, advantages: (B, T); rows: (N,) long."""
    named = selected_parameters(model, param_pattern)
    params = [p for _, p in named]
    device = params[0].device
    loss_fn = POLICY_LOSSES.get("ppo_clip")
    out: dict[str, list[torch.Tensor]] = {name: [] for name in ROLE_SETS}
    was_training = model.training
    model.eval()  # no dropout: the gradient of the policy as it samples
    for i in rows.tolist():
        row = batch.select(torch.tensor([i]))  # (1, t), trimmed to its length
        masks = {
            name: (row.loss_mask * role_mask(row.roles, roles)).to(device)
            for name, roles in ROLE_SETS.items()
        }
        mb = row.to(device)
        adv = advantages[i : i + 1, : mb.input_ids.shape[1]].to(device)
        lp = token_logprobs(model, mb.input_ids, mb.attention_mask, temperature).logprobs  # (1, t)
        for k, (name, mask) in enumerate(masks.items()):
            loss = loss_fn(lp, lp.detach(), adv, mask, aggregation="token_mean").loss
            grads = torch.autograd.grad(loss, params, retain_graph=k + 1 < len(ROLE_SETS), allow_unused=True)
            flat = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
            out[name].append(torch.cat([g.reshape(-1) for g in flat]).float().cpu())
    model.train(was_training)
    n_params = sum(p.numel() for p in params)
    stack = {k: torch.stack(v) if v else torch.zeros((0, n_params)) for k, v in out.items()}
    return RoleGradients(stack["reasoning"], stack["action"], n_params)
