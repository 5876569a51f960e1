"""CEA: the 6×6 system against known λ and by hand, Laplace smoothing, question filtering, gradient angles,
per-role gradients of the trainer's loss on the tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from arlkit.algos.losses import POLICY_LOSSES
from arlkit.errors import ArlkitError
from arlkit.eval.cea import (
    MODELS,
    angles_deg,
    attribute,
    indicator_matrix,
    role_angles,
    smoothed_logit,
    solve_lambdas,
)
from arlkit.eval.cea_grads import role_gradients, selected_parameters, usable_rows
from arlkit.models.forward import token_logprobs
from arlkit.models.tiny import demo_trajectory
from arlkit.trajectory import collate, role_mask


def test_system_reproduces_known_lambdas() -> None:
    gen = torch.Generator().manual_seed(0)
    lam = torch.randn(20, 6, generator=gen, dtype=torch.float64)
    z = lam @ indicator_matrix().T  # z_q = X λ_q
    assert torch.allclose(solve_lambdas(z), lam, atol=1e-12)


def test_lambdas_from_synthetic_success_rates() -> None:
    # success rates sigmoid(Xλ) sampled with n = 10^7: the smoothed logits of the counts are z up to ~1e-3
    lam = torch.tensor(
        [[-0.5, 0.8, 0.3, -0.2, 0.1, -0.6], [0.2, -0.3, 0.5, 0.4, -0.1, 0.7]], dtype=torch.float64
    )
    n = 10_000_000
    rates = torch.sigmoid(lam @ indicator_matrix().T)  # (2, 6) in MODELS order
    counts = {m: (rates[:, i] * n).round().long().tolist() for i, m in enumerate(MODELS)}
    att = attribute(counts, n)
    assert att.kept.tolist() == [0, 1]
    assert torch.allclose(att.lambdas, lam, atol=1e-4)
    assert float(att.interference_share) == 0.5  # λ23 = −0.6 and 0.7


def test_lambdas_by_hand() -> None:
    # n = 9: s̃ = (c + 0.5)/10. Base c=4 → 0.45, Reas 9 → 0.95, Tool 9 → 0.95, Unified 0 → 0.05,
    # Hybrid-Tool 4 → 0.45, Hybrid-Reas 9 → 0.95. logit(0.95) = log 19 = L, logit(0.05) = −L, logit(0.45) = b.
    L, b = math.log(19), math.log(0.45 / 0.55)
    counts = {"base": [4], "reas": [9], "tool": [9], "unified": [0], "hybrid_tool": [4], "hybrid_reas": [9]}
    lam = attribute(counts, 9).lambdas[0].tolist()
    # λ1 = z_B = b; λ2 = z_HT − z_B = 0; λ3 = z_HR − z_B = L − b; λ12 = z_Tool − z_HT = L − b;
    # λ13 = z_Reas − z_HR = 0; λ23 = z_Uni − z_Tool − z_Reas + z_Base = −L − L − L + b
    want = [b, 0.0, L - b, L - b, 0.0, -3 * L + b]
    assert lam == pytest.approx(want, abs=1e-12)


def test_laplace_smoothing_is_finite_and_symmetric() -> None:
    n = 8
    c = torch.arange(n + 1)
    z = smoothed_logit(c, n)
    assert z[0] == pytest.approx(-math.log(2 * n + 1)) and z[-1] == pytest.approx(math.log(2 * n + 1))
    assert torch.allclose(z, -z.flip(0))  # z(n − c) = −z(c)
    assert z[4] == 0.0  # c = n/2: s̃ = 1/2


def test_questions_no_model_solves_are_dropped() -> None:
    counts = {m: [0, 2, 0] for m in MODELS}
    counts["tool"] = [0, 2, 1]
    att = attribute(counts, 4)
    assert att.kept.tolist() == [1, 2]
    # question 1: every model at c=2, all z equal → only λ1 is non-zero
    assert att.lambdas[0].tolist() == pytest.approx([0.0] * 6)
    # question 2: only Tool solves: λ12 = z_Tool − z_HT > 0 and λ23 = −z_Tool + z_Base < 0
    assert att.lambdas[1, 3] > 0 and att.lambdas[1, 5] < 0
    assert float(att.interference_share) == 0.5
    none = attribute({m: [0, 0] for m in MODELS}, 4)
    assert len(none.kept) == 0 and math.isnan(float(none.interference_share))


def test_angles() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    got = angles_deg(a, a)
    want = torch.tensor([[0, 90, 180], [90, 0, 90], [180, 90, 0]], dtype=torch.float64)
    assert torch.allclose(got, want, atol=1e-5)
    r = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    act = torch.tensor([[0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, -1.0, 0.0]])
    ang = role_angles(r, act)
    assert ang.cross_role.tolist() == pytest.approx([90, 0, 180], abs=1e-5)
    # pairs (0,1), (0,2), (1,2): reasoning 45, 90, 45; action 90, 90, 135
    assert ang.same_reasoning.tolist() == pytest.approx([45, 90, 45], abs=1e-5)
    assert ang.same_action.tolist() == pytest.approx([90, 90, 135], abs=1e-5)


@pytest.fixture(scope="module")
def demo_batch(tiny, rows_by_kind):
    """Real demonstrations: two with tool calls (ACTION spans) and one that answers from memory."""
    rows = rows_by_kind["2hop"][:2] + rows_by_kind["1hop"][:1]
    strategies = ("all_hops", "first_hop", "none")
    trajs = [demo_trajectory(tiny.task, tiny.tokenizer, r, s) for r, s in zip(rows, strategies, strict=True)]
    batch = collate(trajs, tiny.tokenizer.pad_token_id)
    adv = torch.tensor([0.7, -1.2, 0.5])[:, None] * batch.loss_mask
    return batch, adv


def test_usable_rows_need_both_roles_and_a_moving_advantage(demo_batch) -> None:
    batch, adv = demo_batch
    assert usable_rows(batch, adv).tolist() == [0, 1]  # row 2 has no action token
    assert usable_rows(batch, adv * torch.tensor([[0.0], [1.0], [1.0]])).tolist() == [1]  # row 0: A = 0


def test_role_gradients_are_the_trainers_loss_split_by_role(tiny, demo_batch) -> None:
    batch, adv = demo_batch
    model = tiny.model
    rows = torch.tensor([0, 1])
    got = role_gradients(model, batch, adv, rows, param_pattern=r"layers\.1\.")
    params = [p for _, p in selected_parameters(model, r"layers\.1\.")]
    assert got.reasoning.shape == (2, got.n_params) and got.n_params == sum(p.numel() for p in params)
    for j, i in enumerate(rows.tolist()):
        row = batch.select(torch.tensor([i]))
        a = adv[i : i + 1, : row.input_ids.shape[1]]
        lp = token_logprobs(model, row.input_ids, row.attention_mask).logprobs
        masks = [
            row.loss_mask * role_mask(row.roles, roles) for roles in (("reasoning", "answer"), ("action",))
        ]
        # at ratio 1 the PPO-clip token-mean gradient is −A·∇(mean of log π over the role's tokens)
        for mask, g in zip(masks, (got.reasoning[j], got.action[j]), strict=True):
            manual = -(a * lp * mask).sum() / mask.sum()
            want = torch.cat([x.reshape(-1) for x in torch.autograd.grad(manual, params, retain_graph=True)])
            assert torch.allclose(g, want, atol=1e-6)
        # the two role losses partition the whole loss: ∇L = (n_r g_r + n_a g_a)/(n_r + n_a)
        full = POLICY_LOSSES.get("ppo_clip")(lp, lp.detach(), a, row.loss_mask).loss
        g_full = torch.cat([x.reshape(-1) for x in torch.autograd.grad(full, params)])
        n_r, n_a = (float(m.sum()) for m in masks)
        assert torch.allclose(g_full, (n_r * got.reasoning[j] + n_a * got.action[j]) / (n_r + n_a), atol=1e-6)
    assert (got.reasoning.norm(dim=1) > 0).all() and (got.action.norm(dim=1) > 0).all()
    with pytest.raises(ArlkitError, match="grad_params"):
        selected_parameters(model, "no_such_parameter")
