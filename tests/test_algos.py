"""Advantage estimators, losses, KL and shaping against hand-computed cases with observation tokens
mid-sequence (the arithmetic is in the comments)."""

import math

import pytest
import torch

from arlkit.algos.advantages import ADVANTAGES, AdvantageInputs, AdvantageParams, group_stats, masked_whiten
from arlkit.algos.kl import KL_ESTIMATORS
from arlkit.algos.losses import (
    AGGREGATIONS,
    POLICY_LOSSES,
    explained_variance,
    gspo_loss,
    ppo_clip_loss,
    value_loss,
)
from arlkit.algos.shaping import overlong_penalty, varied_groups
from arlkit.errors import ArlkitError

# Layout of every row: [prompt, gen, obs, obs, gen, gen] — turn 0 generates token 1, the env inserts tokens 2-3,
# turn 1 generates tokens 4-5. Loss mask: 0 1 0 0 1 1.
MASK = torch.tensor([0.0, 1, 0, 0, 1, 1])
TURN = torch.tensor([0, 0, 0, 0, 1, 1])
P = AdvantageParams()


def _inputs(rewards, groups, **kw) -> AdvantageInputs:
    B = len(rewards)
    tr = torch.zeros(B, 6)
    tr[:, 5] = torch.tensor(rewards, dtype=torch.float32)
    return AdvantageInputs(
        token_rewards=tr,
        loss_mask=MASK.repeat(B, 1),
        group_index=torch.tensor(groups),
        turn=TURN.repeat(B, 1),
        attention_mask=torch.ones(B, 6),
        **kw,
    )


def _one_row(rewards: list[float], values: list[float] | None = None) -> AdvantageInputs:
    return AdvantageInputs(
        token_rewards=torch.tensor([rewards]),
        loss_mask=MASK[None],
        group_index=torch.tensor([0]),
        turn=TURN[None],
        attention_mask=torch.ones(1, 6),
        values=None if values is None else torch.tensor([values]),
    )


def test_grpo_hand_computed():
    # group 0: rewards 1,0,0,1 -> mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 0.57735 -> A = ±0.5/0.57735 = ±0.86603
    # group 1: rewards 1,1 -> A = 0 (std 0, numerator 0)
    out = ADVANTAGES.get("grpo")(_inputs([1, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1]), P)
    a = 0.5 / math.sqrt(1 / 3)
    expected_row = torch.tensor([a, -a, -a, a, 0.0, 0.0])
    assert torch.allclose(out.advantages[:, 1], expected_row, atol=1e-5)
    # broadcast to generated tokens only: prompt and observation columns stay 0
    assert torch.all(out.advantages[:, [0, 2, 3]] == 0)
    assert torch.allclose(out.advantages[:, 4], expected_row, atol=1e-5)


def test_dr_grpo_has_no_std_division():
    # mean 0.25 -> 0.75, -0.25, -0.25, -0.25 (GRPO with norm_by_std=False is the same numerator)
    expected = torch.tensor([0.75, -0.25, -0.25, -0.25])
    out = ADVANTAGES.get("dr_grpo")(_inputs([1, 0, 0, 0], [0, 0, 0, 0]), P)
    assert torch.allclose(out.advantages[:, 1], expected)
    plain = ADVANTAGES.get("grpo")(_inputs([1, 0, 0, 0], [0] * 4), AdvantageParams(norm_by_std=False))
    assert torch.allclose(plain.advantages, out.advantages)


def test_rloo_leave_one_out_baseline():
    # group 0 = [1, 0, 0, 1]: row 0: 1 - (0+0+1)/3 = 2/3; row 1: 0 - (1+0+1)/3 = -2/3
    # group 1 = [1, 1]: 0; group 2 is a singleton: no baseline, 0
    out = ADVANTAGES.get("rloo")(_inputs([1, 0, 0, 1, 1, 1, 5], [0, 0, 0, 0, 1, 1, 2]), P)
    expected = torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3, 0, 0, 0])
    assert torch.allclose(out.advantages[:, 5], expected, atol=1e-6)
    assert torch.all(out.advantages[:, [0, 2, 3]] == 0)


def test_returns_to_go_aligned_unaligned_and_per_turn():
    # step reward 0.5 on token 1 (end of turn 0's action), outcome 1 on token 5; γ = 0.5
    x = _one_row([0, 0.5, 0, 0, 0, 1])
    fn = ADVANTAGES.get("reinforce_pp")
    # aligned, per token: time steps are tokens 1, 4, 5: G5 = 1, G4 = 0.5·1 = 0.5, G1 = 0.5 + 0.5·0.5 = 0.75
    aligned = fn(x, AdvantageParams(gamma=0.5)).returns
    assert torch.allclose(aligned, torch.tensor([[0, 0.75, 0, 0, 0.5, 1]]))
    # unaligned: the observation tokens 2, 3 are time steps too: G3 = 0.25, G2 = 0.125, G1 = 0.5 + 0.0625
    unaligned = fn(x, AdvantageParams(gamma=0.5, aligned=False)).returns
    assert torch.allclose(unaligned, torch.tensor([[0, 0.5625, 0, 0, 0.5, 1]]))
    # per turn: no discount inside turn 1 (G4 = G5 = 1), one γ across the turn boundary: G1 = 0.5 + 0.5·1
    per_turn = fn(x, AdvantageParams(gamma=0.5, discount_unit="turn")).returns
    assert torch.allclose(per_turn, torch.tensor([[0, 1.0, 0, 0, 1.0, 1.0]]))


def test_reinforce_pp_whitens_returns_over_generated_tokens():
    # returns over tokens 1, 4, 5 = 0.75, 0.5, 1 (previous test): mean 0.75, unbiased var (0 + 0.0625·2)/2
    x = _one_row([0, 0.5, 0, 0, 0, 1])
    out = ADVANTAGES.get("reinforce_pp")(x, AdvantageParams(gamma=0.5))
    std = math.sqrt(0.125 / 2)
    assert torch.allclose(out.advantages, torch.tensor([[0, 0, 0, 0, -0.25 / std, 0.25 / std]]), atol=1e-4)


def test_reinforce_pp_baseline_subtracts_group_mean_then_whitens():
    # group [1, 0]: R - mean = ±0.5 on each row's 3 generated tokens; whitened over 6 tokens: mean 0, unbiased
    # var 6·0.25/5 = 0.3 -> ±0.5/√0.3 = ±0.9129
    out = ADVANTAGES.get("reinforce_pp_baseline")(_inputs([1, 0], [0, 0]), P)
    z = 0.5 / math.sqrt(0.3)
    assert torch.allclose(out.advantages[:, [1, 4, 5]], torch.tensor([[z] * 3, [-z] * 3]), atol=1e-4)
    assert torch.all(out.advantages[:, [0, 2, 3]] == 0)


def test_remax_subtracts_greedy_reward():
    out = ADVANTAGES.get("remax")(_inputs([1, 0], [0, 0], baseline_scores=torch.tensor([0.25, 0.25])), P)
    assert torch.allclose(out.advantages[:, 5], torch.tensor([0.75, -0.25]))
    assert ADVANTAGES.info("remax")["needs_greedy_baseline"] and ADVANTAGES.info("gae")["needs_values"]
    with pytest.raises(ValueError, match="baseline"):
        ADVANTAGES.get("remax")(_inputs([1, 0], [0, 0]), P)


# Values V(c_<t); 0.9 on the observation tokens is what an untrained critic says about tokens it never fits.
VALUES = [0.0, 0.2, 0.9, 0.9, 0.5, 0.6]


def test_gae_aligned_hand_computed():
    # γ = 1, λ = 0.5, outcome 1 on token 5. Time steps 1, 4, 5 (observations skipped):
    # δ5 = 1 + 0 - 0.6 = 0.4, A5 = 0.4; δ4 = 0 + 0.6 - 0.5 = 0.1, A4 = 0.1 + 0.5·0.4 = 0.3
    # δ1 = 0 + V4 - V1 = 0.5 - 0.2 = 0.3 (bootstraps across the observation), A1 = 0.3 + 0.5·0.3 = 0.45
    x = _one_row([0, 0, 0, 0, 0, 1], VALUES)
    out = ADVANTAGES.get("gae")(x, AdvantageParams(lam=0.5, whiten=False))
    assert torch.allclose(out.advantages, torch.tensor([[0, 0.45, 0, 0, 0.3, 0.4]]))
    assert torch.allclose(out.returns, torch.tensor([[0, 0.65, 0, 0, 0.8, 1.0]]))  # A + V
    # whitened (the default, as verl): mean 0.3833, unbiased var ((0.0667)² + (0.0833)² + (0.0167)²)/2 = 0.00583
    # -> (0.45, 0.3, 0.4) ↦ (0.873, -1.091, 0.218); the value targets stay the raw A + V
    white = ADVANTAGES.get("gae")(x, AdvantageParams(lam=0.5))
    assert torch.allclose(white.advantages, torch.tensor([[0, 0.8729, 0, 0, -1.0911, 0.2182]]), atol=1e-3)
    assert torch.equal(white.returns, out.returns)


def test_gae_alignment_changes_exactly_the_turns_before_an_observation():
    # unaligned: tokens 2, 3 are steps: δ3 = 0.5 - 0.9 = -0.4, A3 = -0.4 + 0.5·0.3 = -0.25; δ2 = 0.9 - 0.9 = 0,
    # A2 = -0.125; δ1 = 0.9 - 0.2 = 0.7, A1 = 0.7 + 0.5·(-0.125) = 0.6375. Tokens 4, 5 are as aligned.
    x = _one_row([0, 0, 0, 0, 0, 1], VALUES)
    aligned = ADVANTAGES.get("gae")(x, AdvantageParams(lam=0.5, whiten=False)).advantages
    unaligned = ADVANTAGES.get("gae")(x, AdvantageParams(lam=0.5, aligned=False, whiten=False)).advantages
    assert torch.allclose(unaligned, torch.tensor([[0, 0.6375, 0, 0, 0.3, 0.4]]))
    assert torch.equal(aligned[:, 4:], unaligned[:, 4:]) and not torch.isclose(aligned[0, 1], unaligned[0, 1])
    # with λ = γ = 1 GAE telescopes to G - V on both axes: the observation values cancel out
    lam1 = [
        ADVANTAGES.get("gae")(x, AdvantageParams(aligned=a, whiten=False)).advantages for a in (True, False)
    ]
    assert torch.allclose(lam1[0], lam1[1]) and math.isclose(float(lam1[0][0, 1]), 0.8, rel_tol=1e-6)


def test_aligned_gae_ignores_values_and_rewards_under_observations():
    x = _one_row([0, 0, 0, 0, 0, 1], VALUES)
    noisy_v = torch.tensor([VALUES])
    noisy_v[:, [0, 2, 3]] = torch.randn(1, 3) * 100
    y = AdvantageInputs(x.token_rewards, x.loss_mask, x.group_index, x.turn, x.attention_mask, noisy_v)
    p = AdvantageParams(gamma=0.9, lam=0.7)
    assert torch.allclose(ADVANTAGES.get("gae")(x, p).advantages, ADVANTAGES.get("gae")(y, p).advantages)


def _gae_loop(rewards, values, mask, gamma, lam):
    """Slow reference: plain Python GAE over the generated positions of one row."""
    steps = [t for t in range(len(mask)) if mask[t] > 0]
    adv, last = [0.0] * len(mask), 0.0
    for i in reversed(range(len(steps))):
        t = steps[i]
        v_next = values[steps[i + 1]] if i + 1 < len(steps) else 0.0
        last = rewards[t] + gamma * v_next - values[t] + gamma * lam * last
        adv[t] = last
    return adv


def test_gae_vectorised_equals_python_loop_on_random_rows():
    g = torch.Generator().manual_seed(0)
    B, T = 5, 17
    mask = (torch.rand(B, T, generator=g) > 0.4).float()
    rewards = torch.randn(B, T, generator=g) * mask
    values = torch.randn(B, T, generator=g)
    x = AdvantageInputs(rewards, mask, torch.arange(B), values=values)
    out = ADVANTAGES.get("gae")(x, AdvantageParams(gamma=0.97, lam=0.9, whiten=False)).advantages
    for b in range(B):
        ref = _gae_loop(rewards[b].tolist(), values[b].tolist(), mask[b].tolist(), 0.97, 0.9)
        assert torch.allclose(out[b], torch.tensor(ref), atol=1e-5)


def test_every_estimator_is_zero_outside_the_loss_mask_and_invariant_there():
    base = _inputs([1, 0, 0.5, 1], [0, 0, 1, 1], values=torch.rand(4, 6), baseline_scores=torch.rand(4))
    v = base.values.clone()
    v[:, [0, 2, 3]] = torch.randn(4, 3) * 50  # what a critic says about prompt/observation tokens is noise
    moved = AdvantageInputs(
        base.token_rewards,
        base.loss_mask,
        base.group_index,
        base.turn,
        base.attention_mask,
        v,
        base.baseline_scores,
    )
    for name in ADVANTAGES.names():
        a = ADVANTAGES.get(name)(base, P).advantages
        assert torch.all(a[:, [0, 2, 3]] == 0), name
        assert torch.allclose(a, ADVANTAGES.get(name)(moved, P).advantages, atol=1e-6), name


def test_group_stats_singleton_group_has_zero_std():
    mean, std = group_stats(torch.tensor([3.0, 1.0, 2.0]), torch.tensor([0, 1, 1]))
    assert mean.tolist() == [3.0, 1.5, 1.5]
    assert std[0] == 0 and math.isclose(float(std[1]), math.sqrt(0.5), rel_tol=1e-6)


def test_masked_whiten_uses_masked_entries_only():
    x = torch.tensor([[1.0, 100.0, 3.0]])
    out = masked_whiten(x, torch.tensor([[1.0, 0.0, 1.0]]))
    # mean 2, unbiased std √2 over {1, 3}
    assert torch.allclose(out, torch.tensor([[-1 / math.sqrt(2), 0.0, 1 / math.sqrt(2)]]), atol=1e-4)


def test_ppo_clip_hand_computed_with_observation_in_the_middle():
    # log-ratio per token: prompt 0, gen log 1.5, obs 5 (masked), obs -3 (masked), gen log 0.5, gen 0
    old = torch.zeros(1, 6)
    new = torch.tensor([[0.0, math.log(1.5), 5.0, -3.0, math.log(0.5), 0.0]])
    adv = torch.ones(1, 6)
    out = ppo_clip_loss(new, old, adv, MASK[None], clip_low=0.2, clip_high=0.28)
    # gen tokens: r=1.5 -> min(1.5, 1.28) = 1.28; r=0.5 -> min(0.5, 0.8) = 0.5; r=1 -> 1
    assert math.isclose(float(out.loss), -(1.28 + 0.5 + 1.0) / 3, rel_tol=1e-6)
    assert math.isclose(float(out.stats["clip_frac"]), 1 / 3, rel_tol=1e-6)


def test_dual_clip_caps_negative_advantage_loss():
    # r = 5, A = -1: -min(-5, -1.28) = 5, capped by dual clip c=3 at -c*A = 3
    new = torch.tensor([[math.log(5.0)]])
    out = ppo_clip_loss(
        new, torch.zeros(1, 1), -torch.ones(1, 1), torch.ones(1, 1), clip_high=0.28, dual_clip=3.0
    )
    assert math.isclose(float(out.loss), 3.0, rel_tol=1e-6) and float(out.stats["dual_clip_frac"]) == 1.0
    out = ppo_clip_loss(new, torch.zeros(1, 1), -torch.ones(1, 1), torch.ones(1, 1), clip_high=0.28)
    assert math.isclose(float(out.loss), 5.0, rel_tol=1e-6)


def test_gspo_sequence_ratio_value_clip_and_gradient():
    # generated tokens 1, 4, 5 with ratios 1.1, 0.9, 1 -> s = (1.1·0.9·1)^(1/3) = 0.99666; observations ignored
    new = torch.tensor([[0.0, math.log(1.1), 7.0, -7.0, math.log(0.9), 0.0]], requires_grad=True)
    s = (1.1 * 0.9) ** (1 / 3)
    out = gspo_loss(new, torch.zeros(1, 6), torch.ones(1, 6), MASK[None], clip_low=3e-4, clip_high=4e-4)
    # A = 1: min(s, clip(s) = 0.9997) = s, unclipped; per-token loss -s, seq-mean-token-mean -> -s
    assert math.isclose(out.loss.item(), -s, rel_tol=1e-6) and float(out.stats["clip_frac"]) == 0.0
    out.loss.backward()
    # gradient of -s·A per generated token, averaged over 3 tokens: -s/3; none on prompt/observation tokens
    assert torch.allclose(new.grad, torch.tensor([[0, -s / 3, 0, 0, -s / 3, -s / 3]]), atol=1e-6)
    # A = -1: -min(-s, -0.9997) = 0.9997, the clipped value, and no gradient through it
    neg = gspo_loss(new, torch.zeros(1, 6), -torch.ones(1, 6), MASK[None], clip_low=3e-4, clip_high=4e-4)
    assert math.isclose(neg.loss.item(), 1 - 3e-4, rel_tol=1e-6) and float(neg.stats["clip_frac"]) == 1.0


def test_reinforce_loss_is_minus_advantage_times_logprob():
    lp = torch.tensor([[0.0, -1.0, 9.0, 9.0, -2.0, -0.5]])
    adv = torch.tensor([[0.0, 2.0, 5.0, 5.0, 2.0, 2.0]])
    out = POLICY_LOSSES.get("reinforce")(lp, lp, adv, MASK[None])
    # -(2·-1 + 2·-2 + 2·-0.5)/3 = 7/3
    assert math.isclose(float(out.loss), 7 / 3, rel_tol=1e-6)


@pytest.mark.parametrize("name", POLICY_LOSSES.names())
def test_masked_tokens_get_no_gradient(name):
    new = torch.randn(2, 6, requires_grad=True)
    out = POLICY_LOSSES.get(name)(
        new, new.detach(), torch.randn(2, 6), MASK.repeat(2, 1)
    )  # ratio 1: unclipped
    out.loss.backward()
    assert torch.all(new.grad[:, [0, 2, 3]] == 0)
    assert torch.all(new.grad[:, [1, 4, 5]] != 0)


@pytest.mark.parametrize("name", POLICY_LOSSES.names())
@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"])
def test_values_under_masked_tokens_change_nothing(name, aggregation):
    new, old, adv = torch.randn(2, 6), torch.randn(2, 6), torch.randn(2, 6)
    fn = POLICY_LOSSES.get(name)
    base = fn(new, old, adv, MASK.repeat(2, 1), aggregation=aggregation).loss
    new2, old2, adv2 = new.clone(), old.clone(), adv.clone()
    for t in (new2, old2, adv2):
        t[:, [0, 2, 3]] = torch.randn(2, 3) * 100
    assert torch.allclose(base, fn(new2, old2, adv2, MASK.repeat(2, 1), aggregation=aggregation).loss)


def test_aggregations_hand_computed():
    # row 2 is empty (no generated token): the seq means skip it, as verl's agg_loss does
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0], [7.0, 7.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert float(AGGREGATIONS.get("token_mean")(values, mask)) == pytest.approx(10 / 4)
    assert float(AGGREGATIONS.get("seq_mean_token_sum")(values, mask)) == pytest.approx((6 + 4) / 2)
    assert float(AGGREGATIONS.get("seq_mean_token_mean")(values, mask)) == pytest.approx((2 + 4) / 2)
    # Dr.GRPO: sums 6, 4, 0 over all 3 rows, mean 10/3, divided by the budget 10
    norm = AGGREGATIONS.get("seq_mean_token_sum_norm")(values, mask, norm_constant=10.0)
    assert float(norm) == pytest.approx(1 / 3)


def test_value_loss_clipping_hand_computed():
    # V = 0.5, V_old = 0.2, R = 1, ε = 0.2: (V-R)² = 0.25; clipped V = 0.2 + 0.2 = 0.4, (0.4-1)² = 0.36
    # loss = ½·max(0.25, 0.36) = 0.18 (the pessimistic, clipped term)
    v, old, ret, m = (torch.tensor([[x]]) for x in (0.5, 0.2, 1.0, 1.0))
    out = value_loss(v, old, ret, m, clip_range=0.2)
    assert float(out.loss) == pytest.approx(0.18) and float(out.stats["vf_clip_frac"]) == 1.0
    assert float(value_loss(v, old, ret, m, clip_range=None).loss) == pytest.approx(0.125)


def test_explained_variance():
    ret, mask = torch.tensor([[1.0, 2.0, 3.0, 99.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert float(explained_variance(ret, ret, mask)) == pytest.approx(1.0)
    assert float(explained_variance(torch.full_like(ret, 2.0), ret, mask)) == pytest.approx(0.0, abs=1e-6)


def test_kl_estimators_hand_computed():
    lp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    # log r = log(ref/pi) = log 0.5
    assert float(KL_ESTIMATORS.get("k1")(lp, ref)) == pytest.approx(math.log(2))
    assert float(KL_ESTIMATORS.get("k2")(lp, ref)) == pytest.approx(0.5 * math.log(2) ** 2)
    assert float(KL_ESTIMATORS.get("k3")(lp, ref)) == pytest.approx(0.5 - 1 - math.log(0.5))
    assert float(KL_ESTIMATORS.get("k3")(lp, lp)) == 0.0
    # log r = 6: e^6 − 1 − 6 = 396.4, clamped to 10 (verl's bound); log r = −6: e^−6 + 5 = 5.0025, inside
    far = KL_ESTIMATORS.get("k3")(torch.tensor([0.0, -6.0]), torch.tensor([6.0, -12.0]))
    assert far.tolist() == pytest.approx([10.0, math.exp(-6) + 5])


def test_overlong_penalty_ramp():
    # budget 10, buffer 4: free up to 6 generated tokens, then -(n-6)/4, floored at -1
    n = torch.tensor([5, 6, 8, 10, 12])
    assert overlong_penalty(n, 10, 4).tolist() == [0.0, 0.0, -0.5, -1.0, -1.0]
    assert overlong_penalty(n, 10, 4, factor=0.5).tolist() == [0.0, 0.0, -0.25, -0.5, -0.5]


def test_varied_groups_drops_groups_with_equal_rewards():
    keep = varied_groups(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.3, 0.3]), torch.tensor([0, 0, 1, 1, 2, 2]))
    assert keep.tolist() == [False, False, True, True, False, False]


def test_unknown_names_list_valid_ones():
    with pytest.raises(ArlkitError, match="grpo"):
        ADVANTAGES.get("nope")
    with pytest.raises(ArlkitError, match="ppo_clip"):
        POLICY_LOSSES.get("nope")
