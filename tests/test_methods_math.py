"""TAO-RL and APPO tensor functions on hand-built cases (arithmetic in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from arlkit.algos.appo import (
    branching_scores,
    dual_group_advantages,
    future_kl_scaling,
    omega,
    reward_scaling,
    row_zscore,
    select_branch_points,
)
from arlkit.algos.tao import (
    entropy_shaping,
    group_filter,
    post_tool_mask,
    tool_filter_all_failed,
    tool_filter_group_uniform,
)

# ----------------------------------------------------------------------------------------- TAO-RL


def test_group_filter_drops_each_kind_of_group_for_its_reason():
    # g0: all right (std 0); g1: varied but every rollout overlong; g2: varied, 2 of 5 overlong -> 3 valid < 4;
    # g3: varied, none overlong -> kept
    scores = torch.tensor([1.0, 1, 1, 1, 1, 0, 1, 0, 1, 0, 0, 0, 1, 1, 0, 0, 1, 0])
    groups = torch.tensor([0] * 4 + [1] * 4 + [2] * 5 + [3] * 5)
    overlong = torch.tensor([False] * 4 + [True] * 4 + [True, True, False, False, False] + [False] * 5)
    res = group_filter(scores, groups, overlong)
    assert res.keep.tolist() == [False] * 13 + [True] * 5
    assert (res.dropped_low_std, res.dropped_all_overlong, res.dropped_few_valid) == (1, 1, 1)
    # std just above the threshold keeps the group; min_valid=3 keeps g2
    assert group_filter(
        torch.tensor([0.0, 0.002]), torch.tensor([0, 0]), torch.tensor([False, False]), min_valid=2
    ).keep.all()
    assert group_filter(scores, groups, overlong, min_valid=3).keep[8:13].all()


def test_tool_filters_paper_rule_and_code_rule():
    # per trajectory (calls, ok): g0 all succeed; g1 all fail; g2 mixed; g3 no tool call at all
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    n_calls = torch.tensor([2, 1, 1, 3, 2, 2, 0, 0])
    n_ok = torch.tensor([2, 1, 0, 0, 2, 0, 0, 0])
    assert tool_filter_group_uniform(groups, n_calls, n_ok).tolist() == [False] * 4 + [True] * 4
    # code rule: trajectories that used tools with no valid call (rows 2, 3, 5) get weight 1 - strength
    w = tool_filter_all_failed(n_calls, n_ok, strength=0.75)
    assert w.tolist() == [1, 1, 0.25, 0.25, 1, 0.25, 1, 1]


def test_post_tool_mask_marks_the_turn_after_a_call():
    # row 0: [prompt | turn0 gen gen (call) | obs | turn1 gen (call) | obs | turn2 gen gen (answer)]
    # row 1: [prompt | turn0 gen (no call: answer) | pad...]
    loss_mask = torch.tensor([[0, 1, 1, 0, 1, 0, 1, 1], [0, 1, 0, 0, 0, 0, 0, 0]], dtype=torch.float32)
    turn = torch.tensor([[0, 0, 0, 0, 1, 1, 2, 2], [0, 0, 0, 0, 0, 0, 0, 0]])
    had_call = torch.tensor([[True, True, False], [False, False, False]])
    out = post_tool_mask(loss_mask, turn, had_call)
    assert out.tolist() == [[0, 0, 0, 0, 1, 0, 1, 1], [0] * 8]


def test_entropy_shaping_formula_and_scope():
    # H = 1, 2, 3 over valid tokens: mean 2, population std sqrt(2/3) -> z = -1.2247, 0, 1.2247; α = 0.01
    adv, h = torch.ones(1, 4), torch.tensor([[9.0, 1.0, 2.0, 3.0]])
    valid = torch.tensor([[0.0, 1, 1, 1]])
    post = torch.tensor([[0.0, 0, 1, 1]])
    z = 1 / math.sqrt(2 / 3)
    out = entropy_shaping(adv, h, valid, post, alpha=0.01)
    assert torch.allclose(out, torch.tensor([[1.0, 1.0, 1.0, 1 + 0.01 * z]]), atol=1e-6)
    everywhere = entropy_shaping(adv, h, valid, post, alpha=0.01, tool_aware_only=False)
    assert torch.allclose(everywhere[0, 1:], torch.tensor([1 - 0.01 * z, 1.0, 1 + 0.01 * z]), atol=1e-6)
    # entropy is a detached weight: no gradient flows into it
    assert not entropy_shaping(adv, h.clone().requires_grad_(True), valid, post).requires_grad


# ----------------------------------------------------------------------------------------- APPO


def test_row_zscore_and_omega():
    x, m = torch.tensor([[1.0, 2.0, 3.0, 100.0]]), torch.tensor([[1.0, 1, 1, 0]])
    assert torch.allclose(row_zscore(x, m), torch.tensor([[-1.2247, 0.0, 1.2247, 0.0]]), atol=1e-4)
    # Δ = 0.1, 0, -0.05 -> Σ_{j≥t} = 0.05, -0.05, -0.05 -> Ω = exp(·), inside [0.8, 1.2]
    cur, old, mask = torch.tensor([[0.1, 0.0, -0.05]]), torch.zeros(1, 3), torch.ones(1, 3)
    assert torch.allclose(
        omega(cur, old, mask), torch.tensor([[math.exp(0.05), math.exp(-0.05), math.exp(-0.05)]])
    )
    # a large drift is clipped to 1 ± 0.2
    assert torch.allclose(omega(torch.tensor([[1.0, -2.0, 0.0]]), old, mask), torch.tensor([[0.8, 0.8, 1.0]]))


def test_branching_score_degenerate_falls_back_to_entropy():
    h = torch.tensor([[0.5, 2.0, 0.1, 1.5, 0.0]])
    mask = torch.tensor([[1.0, 1, 1, 1, 0]])
    allowed = torch.tensor([[True, True, True, False, True]])
    res = branching_scores(h, torch.ones(1, 5) * mask, mask, allowed)
    assert res.omega_degenerate
    # z(H) over 0.5, 2, 0.1, 1.5 (mean 1.025): positive at positions 1 and 3; 3 is not allowed
    assert res.candidates.tolist() == [[False, True, False, False, False]]
    assert torch.allclose(res.score, row_zscore(h, mask))


def test_branching_score_with_omega_needs_both_z_positive():
    h = torch.tensor([[1.0, 3.0, 2.0, 4.0]])
    om = torch.tensor([[1.1, 1.2, 0.9, 0.8]])
    mask, allowed = torch.ones(1, 4), torch.ones(1, 4, dtype=torch.bool)
    res = branching_scores(h, om, mask, allowed)
    assert not res.omega_degenerate
    # z(H) > 0 at 1, 3; z(Ω) > 0 at 0, 1 (mean 1.0) -> only position 1 qualifies; score = z(H)·z(Ω)
    assert res.candidates.tolist() == [[False, True, False, False]]
    assert torch.allclose(res.score, row_zscore(h, mask) * row_zscore(om, mask))


def test_select_branch_points_top_b_per_group_across_rollouts():
    score = torch.tensor([[0.0, 0.9, 0.2, 0.0], [0.0, 0.5, 0.95, 0.0], [0.0, 0.3, 0.0, 0.0]])
    cand = score > 0.1
    cand[1, 2] = False  # the best score is not a candidate
    res = select_branch_points(
        type("S", (), {"score": score, "candidates": cand})(), torch.tensor([0, 0, 1]), budget=2
    )
    assert res == [(0, 1, pytest.approx(0.9)), (1, 1, pytest.approx(0.5)), (2, 1, pytest.approx(0.3))]


def test_dual_group_advantages_and_prefix_credit():
    # one prompt: initial rows 0, 1 (scores 1, 0); branch row 2 from row 0 at t=2 (score 1), branch row 3 from
    # row 1 at t=1 (score 0). Each pair: mean 0.5, unbiased std 0.7071 -> A = ±0.7071 (a = 0.70711).
    a = 0.5 / math.sqrt(0.5)
    mask = torch.tensor([[0.0, 1, 1, 1]] * 4)
    res = dual_group_advantages(
        scores=torch.tensor([1.0, 0.0, 1.0, 0.0]),
        group_index=torch.tensor([0, 0, 0, 0]),
        is_branch=torch.tensor([False, False, True, True]),
        parent=torch.tensor([-1, -1, 0, 1]),
        branch_pos=torch.tensor([-1, -1, 2, 1]),
        loss_mask=mask,
    )
    # row 0: own +a everywhere, branch credit +a on tokens <= 2; row 1: -a, credit -a on tokens <= 1
    expected = torch.tensor([[0, 2 * a, 2 * a, a], [0, -2 * a, -a, -a], [0] * 4, [0] * 4])
    assert torch.allclose(res.advantages, expected, atol=1e-5)
    assert torch.allclose(res.branch_advantages, torch.tensor([a, -a]), atol=1e-5)


def test_reward_scaling_only_touches_prefix_rewards():
    # rewards: process 0.5 at position 1, outcome 1 at position 3; one branch at t_b = 2 with BS = BS_max
    # M_1 = 1 + 1·0.9^(gen-distance 1) = 1.9 -> 0.95; position 3 lies after t_b: unchanged
    rewards = torch.tensor([[0.0, 0.5, 0.0, 1.0]])
    mask = torch.tensor([[0.0, 1, 1, 1]])
    out = reward_scaling(rewards, mask, [(0, 2, 2.0)])
    assert torch.allclose(out, torch.tensor([[0.0, 0.95, 0.0, 1.0]]))
    assert torch.equal(reward_scaling(rewards, mask, []), rewards)


def test_future_kl_on_policy_is_the_literal_2a():
    adv = torch.tensor([[1.0, -0.5, 2.0]])
    lp = torch.tensor([[-1.0, -2.0, -0.5]])
    res = future_kl_scaling(adv, lp, lp, torch.ones(1, 3))
    assert torch.allclose(res.advantages, 2 * adv) and res.row_keep.all()


def test_future_kl_discount_clip_exclusion_and_negative_rule():
    # γ = 0.5, Δ = 0, 0.2, 0: FutureKL = 0.1, 0.2, 0 -> exp = 1.105, 1.221 -> clip [1, 1.2] -> 1.105, 1.2, 1
    adv, old = torch.ones(1, 3), torch.zeros(1, 3)
    res = future_kl_scaling(adv, torch.tensor([[0.0, 0.2, 0.0]]), old, torch.ones(1, 3), gamma=0.5)
    assert torch.allclose(res.advantages, torch.tensor([[1 + math.exp(0.1), 2.2, 2.0]]), atol=1e-5)
    # token 0: Δ = 2 > log 3 is left out of the sums; A < 0 with ratio e² = 7.4 > 6 -> f in [0.8, 1];
    # FutureKL_0 = 0.5·(-0.5) = -0.25 -> exp 0.78 -> 0.8 -> Ã = -1.8; token 1: A > 0, exp(-0.5) -> 1 -> 2
    res = future_kl_scaling(
        torch.tensor([[-1.0, 1.0]]),
        torch.tensor([[2.0, -0.5]]),
        torch.zeros(1, 2),
        torch.ones(1, 2),
        gamma=0.5,
    )
    assert torch.allclose(res.advantages, torch.tensor([[-1.8, 2.0]]), atol=1e-5)


def test_future_kl_drops_sequences_with_two_dual_clipped_negative_tokens():
    # ratio e^1.5 = 4.5 > c = 3 with A < 0 counts as dual-clipped; row 0 has two, row 1 one
    lp = torch.tensor([[1.5, 1.5, 0.0], [1.5, 0.0, 0.0]])
    res = future_kl_scaling(-torch.ones(2, 3), lp, torch.zeros(2, 3), torch.ones(2, 3))
    assert res.row_keep.tolist() == [False, True]
