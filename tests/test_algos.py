"""Advantage, loss and KL functions against hand-computed cases with observation tokens mid-sequence."""

import math

import pytest
import torch

from arlkit.algos.advantages import ADVANTAGES, AdvantageInputs, group_stats
from arlkit.algos.kl import KL_ESTIMATORS
from arlkit.algos.losses import AGGREGATIONS, POLICY_LOSSES, ppo_clip_loss
from arlkit.errors import ArlkitError

# Two rows per group. Layout of every row: [prompt, gen, obs, obs, gen, gen]; the final reward sits on the
# last generated token. Loss mask: 0 1 0 0 1 1.
MASK = torch.tensor([0.0, 1, 0, 0, 1, 1])


def _inputs(rewards, groups):
    B = len(rewards)
    tr = torch.zeros(B, 6)
    tr[:, 5] = torch.tensor(rewards)
    return AdvantageInputs(token_rewards=tr, loss_mask=MASK.repeat(B, 1), group_index=torch.tensor(groups))


def test_grpo_hand_computed():
    # group 0: rewards 1,0,0,1 -> mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 0.57735 -> A = ±0.5/0.57735 = ±0.86603
    # group 1: rewards 1,1 -> A = 0 (std 0, numerator 0)
    out = ADVANTAGES.get("grpo")(_inputs([1, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1]))
    a = 0.5 / math.sqrt(1 / 3)
    expected_row = torch.tensor([a, -a, -a, a, 0.0, 0.0])
    assert torch.allclose(out.advantages[:, 1], expected_row, atol=1e-5)
    # broadcast to generated tokens only: prompt and observation columns stay 0
    assert torch.all(out.advantages[:, [0, 2, 3]] == 0)
    assert torch.allclose(out.advantages[:, 4], expected_row, atol=1e-5)


def test_dr_grpo_numerator_without_std():
    out = ADVANTAGES.get("grpo")(_inputs([1, 0, 0, 0], [0, 0, 0, 0]), norm_by_std=False)
    # mean 0.25 -> 0.75, -0.25, -0.25, -0.25
    assert torch.allclose(out.advantages[:, 1], torch.tensor([0.75, -0.25, -0.25, -0.25]))


def test_group_stats_singleton_group_has_zero_std():
    mean, std = group_stats(torch.tensor([3.0, 1.0, 2.0]), torch.tensor([0, 1, 1]))
    assert mean.tolist() == [3.0, 1.5, 1.5]
    assert std[0] == 0 and math.isclose(float(std[1]), math.sqrt(0.5), rel_tol=1e-6)


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
    assert math.isclose(float(out.loss), 3.0, rel_tol=1e-6)
    out = ppo_clip_loss(new, torch.zeros(1, 1), -torch.ones(1, 1), torch.ones(1, 1), clip_high=0.28)
    assert math.isclose(float(out.loss), 5.0, rel_tol=1e-6)


def test_masked_tokens_get_no_gradient():
    new = torch.randn(2, 6, requires_grad=True)
    adv = torch.randn(2, 6)
    out = ppo_clip_loss(new, new.detach() + 0.1, adv, MASK.repeat(2, 1))
    out.loss.backward()
    assert torch.all(new.grad[:, [0, 2, 3]] == 0)
    assert torch.all(new.grad[:, [1, 4, 5]] != 0)


def test_values_under_masked_tokens_change_nothing():
    new, old, adv = torch.randn(2, 6), torch.randn(2, 6), torch.randn(2, 6)
    base = ppo_clip_loss(new, old, adv, MASK.repeat(2, 1)).loss
    new2, adv2 = new.clone(), adv.clone()
    new2[:, [0, 2, 3]] = torch.randn(2, 3) * 100
    adv2[:, [0, 2, 3]] = torch.randn(2, 3) * 100
    assert torch.allclose(base, ppo_clip_loss(new2, old, adv2, MASK.repeat(2, 1)).loss)


def test_aggregations_hand_computed():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert float(AGGREGATIONS.get("token_mean")(values, mask)) == pytest.approx(10 / 4)
    assert float(AGGREGATIONS.get("seq_mean_token_sum")(values, mask)) == pytest.approx((6 + 4) / 2)
    assert float(AGGREGATIONS.get("seq_mean_token_mean")(values, mask)) == pytest.approx((2 + 4) / 2)


def test_kl_estimators_hand_computed():
    lp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    # log r = log(ref/pi) = log 0.5
    assert float(KL_ESTIMATORS.get("k1")(lp, ref)) == pytest.approx(math.log(2))
    assert float(KL_ESTIMATORS.get("k2")(lp, ref)) == pytest.approx(0.5 * math.log(2) ** 2)
    assert float(KL_ESTIMATORS.get("k3")(lp, ref)) == pytest.approx(0.5 - 1 - math.log(0.5))
    assert float(KL_ESTIMATORS.get("k3")(lp, lp)) == 0.0


def test_unknown_names_list_valid_ones():
    with pytest.raises(ArlkitError, match="grpo"):
        ADVANTAGES.get("nope")
    with pytest.raises(ArlkitError, match="ppo_clip"):
        POLICY_LOSSES.get("nope")
