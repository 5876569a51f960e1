"""arlkit's numerics against verl's, computed independently on the same random inputs with observation holes
(issue 20, "Numerics"). Each `_verl_*` function is written here from verl's `trainer/ppo/core_algos.py` and
`utils/torch_functional.py` (volcengine/verl), not imported: verl is not a dependency."""

from __future__ import annotations

import pytest
import torch

from arlkit.algos.advantages import ADVANTAGES, AdvantageInputs, AdvantageParams, masked_whiten
from arlkit.algos.kl import KL_ESTIMATORS
from arlkit.algos.losses import AGGREGATIONS
from arlkit.config import load_config
from arlkit.errors import ArlkitError

B, T = 6, 19


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random rewards, values and a loss mask with observation holes; row 5 generated nothing."""
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(B, T, generator=g) > 0.35).float()
    mask[:, 0] = 0.0  # the prompt's last token
    mask[5] = 0.0
    rewards = torch.randn(B, T, generator=g) * mask
    values = torch.randn(B, T, generator=g)
    return rewards, values, mask


def _verl_masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum()


def _verl_masked_whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """verl_F.masked_whiten: unbiased masked variance (masked_var with Bessel's n/(n − 1)), shift_mean."""
    mean = _verl_masked_mean(x, mask)
    var = _verl_masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    var = var * n / (n - 1)
    return (x - mean) * torch.rsqrt(var + 1e-8)


def _verl_gae(rewards, values, mask, gamma, lam):
    """core_algos.compute_gae_advantage_return: a right-to-left scan that carries nextvalues and lastgaelam
    across masked (observation) positions, then whitens the advantages; returns = raw advantages + values."""
    nextvalues = torch.zeros(rewards.shape[0])
    lastgaelam = torch.zeros(rewards.shape[0])
    out = []
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam_ = delta + gamma * lam * lastgaelam
        nextvalues = values[:, t] * mask[:, t] + (1 - mask[:, t]) * nextvalues
        lastgaelam = lastgaelam_ * mask[:, t] + (1 - mask[:, t]) * lastgaelam
        out.append(lastgaelam)
    adv = torch.stack(out[::-1], dim=1)
    return _verl_masked_whiten(adv, mask), adv + values


def _verl_k3(logprob: torch.Tensor, ref_logprob: torch.Tensor) -> torch.Tensor:
    """core_algos.kl_penalty_forward, "low_var_kl"/"k3"."""
    kl = torch.clamp(ref_logprob - logprob, min=-20, max=20)
    return torch.clamp(torch.exp(kl) - kl - 1, min=-10, max=10)


def _verl_seq_mean_token_sum(loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """core_algos.agg_loss("seq-mean-token-sum") on one process: token sums, mean over non-empty rows."""
    seq_losses = torch.sum(loss * mask, dim=-1)
    seq_mask = (torch.sum(mask, dim=-1) > 0).float()
    return (seq_losses * seq_mask).sum() / seq_mask.sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gae_whitened_matches_verl(seed):
    rewards, values, mask = _batch(seed)
    x = AdvantageInputs(rewards, mask, torch.arange(B), values=values)
    ours = ADVANTAGES.get("gae")(x, AdvantageParams(gamma=0.97, lam=0.9))
    adv, ret = _verl_gae(rewards, values, mask, 0.97, 0.9)
    # verl leaves whitened values on masked positions; arlkit zeroes them (advantages live on generated tokens)
    assert (ours.advantages * mask - adv * mask).abs().max() < 1e-5
    assert (ours.returns - ret * mask).abs().max() < 1e-5
    assert torch.all(ours.advantages[mask == 0] == 0)


def test_gae_whitening_can_be_turned_off():
    rewards, values, mask = _batch(3)
    x = AdvantageInputs(rewards, mask, torch.arange(B), values=values)
    raw = ADVANTAGES.get("gae")(x, AdvantageParams(whiten=False))
    white = ADVANTAGES.get("gae")(x, AdvantageParams())
    assert torch.allclose(masked_whiten(raw.advantages, mask), white.advantages, atol=1e-6)
    assert load_config(None, []).algo.whiten_gae is True  # default as verl
    assert load_config(None, ["algo.whiten_gae=false"]).algo.whiten_gae is False


@pytest.mark.parametrize("seed", [0, 1])
def test_masked_whiten_matches_verl_unbiased(seed):
    _, values, mask = _batch(seed)
    assert ((masked_whiten(values, mask) - _verl_masked_whiten(values, mask)) * mask).abs().max() < 1e-5


def test_k3_matches_verl_clamp_far_from_the_reference():
    g = torch.Generator().manual_seed(0)
    lp = -torch.rand(4, 50, generator=g) * 3
    ref = lp + torch.randn(4, 50, generator=g) * 8  # |log r| up to ~25: many tokens past the clamp
    ours, theirs = KL_ESTIMATORS.get("k3")(lp, ref), _verl_k3(lp, ref)
    assert (
        float(ours.max()) == 10.0 and (ours - theirs).abs().max() < 1e-6
    )  # rounding of e − 1 − x vs e − x − 1


def test_seq_mean_token_sum_matches_verl_with_empty_rows():
    _, values, mask = _batch(4)  # row 5 is empty
    ours = AGGREGATIONS.get("seq_mean_token_sum")(values, mask)
    assert abs(float(ours - _verl_seq_mean_token_sum(values, mask))) < 1e-6


@pytest.mark.parametrize("advantage", ["grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"])
def test_groups_of_one_are_refused_for_group_relative_estimators(advantage):
    with pytest.raises(ArlkitError, match=r"rollout\.n"):
        load_config(None, ["rollout.n=1", f"algo.advantage={advantage}"])


@pytest.mark.parametrize("advantage", ["reinforce_pp", "remax"])
def test_groups_of_one_are_fine_without_groups(advantage):
    assert load_config(None, ["rollout.n=1", f"algo.advantage={advantage}"]).rollout.n == 1


def test_gspo_defaults_follow_the_loss_unless_set():
    a = load_config(None, ["algo.policy_loss=gspo"]).algo
    assert (a.clip_low, a.clip_high, a.aggregation) == (3e-4, 4e-4, "seq_mean_token_mean")
    b = load_config(
        None, ["algo.policy_loss=gspo", "algo.clip_high=1e-3", "algo.aggregation=token_mean"]
    ).algo
    assert (b.clip_low, b.clip_high, b.aggregation) == (3e-4, 1e-3, "token_mean")
    c = load_config(None, []).algo  # ppo_clip keeps PPO's
    assert (c.clip_low, c.clip_high, c.aggregation) == (0.2, 0.28, "token_mean")
    assert load_config("configs/algos/gspo.yaml", []).algo.clip_high == 4e-4
