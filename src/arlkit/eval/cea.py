"""Capability Effect Attribution (DART, arXiv 2602.00994; METHODS.md §7): pure functions on success counts
and gradients.

Six models: Base; Reas (loss on reasoning tokens only; ANSWER counts as reasoning, METHODS.md §1); Tool (loss
on action tokens only); Unified (every generated token); Hybrid-Tool (Base writes reasoning, Tool writes
actions); Hybrid-Reas (Reas writes reasoning, Base writes actions). Each is a row of indicators
x = [x1 base, x2 tool, x3 reas, x12, x13, x23]; per question the logit of each model's success rate is
z = X λ, a 6×6 system with an exact solution. λ23 = z_Uni − z_Tool − z_Reas + z_Base is the interaction of
reasoning and tool training: λ23 < 0 means they interfere.

Shapes: Q questions, M = 6 models, N trajectories, P gradient entries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

MODELS = ("base", "reas", "tool", "unified", "hybrid_tool", "hybrid_reas")
TERMS = ("λ1", "λ2", "λ3", "λ12", "λ13", "λ23")
TERM_MEANING = {
    "λ1": "base (z of the Base model)",
    "λ2": "tool training, on action tokens (Hybrid-Tool − Base)",
    "λ3": "reasoning training, on reasoning tokens (Hybrid-Reas − Base)",
    "λ12": "tool training's effect on the reasoning tokens it did not train (Tool − Hybrid-Tool)",
    "λ13": "reasoning training's effect on the action tokens it did not train (Reas − Hybrid-Reas)",
    "λ23": "interaction of the two trainings (Unified − Tool − Reas + Base); < 0: interference",
}
# rows in MODELS order, columns in TERMS order (METHODS.md §7)
INDICATORS = (
    (1, 0, 0, 0, 0, 0),  # Base
    (1, 0, 1, 0, 1, 0),  # Reas
    (1, 1, 0, 1, 0, 0),  # Tool
    (1, 1, 1, 1, 1, 1),  # Unified
    (1, 1, 0, 0, 0, 0),  # Hybrid-Tool
    (1, 0, 1, 0, 0, 0),  # Hybrid-Reas
)


def indicator_matrix() -> torch.Tensor:
    """(M, M) float64 X: row m holds the indicators of model MODELS[m]."""
    return torch.tensor(INDICATORS, dtype=torch.float64)


def smoothed_logit(correct: torch.Tensor, n: int) -> torch.Tensor:
    """logit of the Laplace-smoothed success rate s̃ = (c + 0.5)/(n + 1), elementwise. correct: any shape.

    Our smoothing (METHODS.md §7): it keeps z finite at c = 0 and c = n (logit ±log(2n + 1)) and is symmetric,
    s̃(n − c) = 1 − s̃(c), so success and failure are treated alike.
    """
    s = (correct.to(torch.float64) + 0.5) / (n + 1)
    return torch.log(s) - torch.log1p(-s)


def solve_lambdas(z: torch.Tensor) -> torch.Tensor:
    """(Q, M) logits in MODELS order -> (Q, M) λ in TERMS order, solving z_q = X λ_q exactly per question."""
    return torch.linalg.solve(indicator_matrix(), z.to(torch.float64).T).T  # (M, Q) -> (Q, M)


@dataclass(frozen=True)
class Attribution:
    kept: torch.Tensor  # (Q',) long: questions some model solves at least once
    z: torch.Tensor  # (Q', M) smoothed logits of the kept questions
    lambdas: torch.Tensor  # (Q', M) λ per kept question, TERMS order
    interference_share: torch.Tensor  # () share of kept questions with λ23 < 0 (NaN if none kept)


def attribute(correct: Mapping[str, Sequence[int]], n: int) -> Attribution:
    """λ per question from each model's correct counts out of n (`correct[model]`: (Q,), every model of
    MODELS). Questions no model ever solves carry no signal (all six z equal) and are dropped, as in the
    paper."""
    c = torch.tensor([list(correct[m]) for m in MODELS], dtype=torch.long).T  # (Q, M)
    kept = torch.nonzero((c > 0).any(dim=1)).flatten()
    z = smoothed_logit(c[kept], n)
    lam = solve_lambdas(z) if len(kept) else torch.zeros((0, len(MODELS)), dtype=torch.float64)
    share = (lam[:, -1] < 0).double().mean() if len(kept) else torch.tensor(float("nan"))
    return Attribution(kept=kept, z=z, lambdas=lam, interference_share=share)


def angles_deg(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-30) -> torch.Tensor:
    """(N, P), (K, P) -> (N, K) angles in degrees between rows, computed in float64 (P can be millions)."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    cos = (a @ b.T) / (a.norm(dim=1)[:, None] * b.norm(dim=1)[None, :]).clamp(min=eps)
    return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))


@dataclass(frozen=True)
class RoleAngles:
    cross_role: torch.Tensor  # (N,) angle(g_i^reasoning, g_i^action) within each trajectory
    same_reasoning: torch.Tensor  # (N(N−1)/2,) angle(g_i^reasoning, g_j^reasoning), i < j
    same_action: torch.Tensor  # (N(N−1)/2,) angle(g_i^action, g_j^action), i < j


def role_angles(g_reasoning: torch.Tensor, g_action: torch.Tensor) -> RoleAngles:
    """Angles between per-trajectory role gradients (METHODS.md §7): reasoning vs action of the same
    trajectory, and same-role gradients of different trajectories. Inputs (N, P), row i = trajectory i."""
    n = g_reasoning.shape[0]
    upper = torch.triu_indices(n, n, offset=1)
    same_r = angles_deg(g_reasoning, g_reasoning)[upper[0], upper[1]]
    same_a = angles_deg(g_action, g_action)[upper[0], upper[1]]
    cross = angles_deg(g_reasoning, g_action).diagonal()
    return RoleAngles(cross_role=cross, same_reasoning=same_r, same_action=same_a)
