"""Train–inference mismatch corrections (TIS, MIS, IcePop) against hand-computed weights, and a training step on
the tiny model with each one (algos/correction.py, METHODS.md §9)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_run_overrides
from rich.console import Console

from arlkit.algos.correction import CORRECTIONS, CorrectionParams, icepop, mis, tis
from arlkit.algos.losses import ppo_clip_loss
from arlkit.config import load_config
from arlkit.errors import ArlkitError
from arlkit.train.loop import setup, train_step

# Rows: [prompt, gen, obs, gen, gen]; loss mask 0 1 0 1 1. Row 2 generated nothing (an empty row).
MASK = torch.tensor([[0.0, 1, 0, 1, 1], [0.0, 1, 0, 1, 1], [0.0, 0, 0, 0, 0]])
# ρ_t = π_old/μ on the generated tokens: row 0 (1.5, 3, 0.5), row 1 (1.1, 0.9, 1.0). Off-mask entries are
# wild (ρ = e^9) and must change nothing.
RHO = torch.tensor([[9.0, 1.5, 9.0, 3.0, 0.5], [9.0, 1.1, 9.0, 0.9, 1.0], [9.0, 9.0, 9.0, 9.0, 9.0]])
ROLLOUT_LP = torch.tensor([[-1.0, -2.0, -0.5, -1.5, -3.0]]).repeat(3, 1)
OLD_LP = ROLLOUT_LP + torch.where(RHO == 9.0, torch.tensor(9.0), RHO.log())
P = CorrectionParams()  # cap 2, band [0.5, 2], product


def test_tis_truncates_token_ratios_at_the_cap():
    c = tis(OLD_LP, ROLLOUT_LP, MASK, P)
    # min(ρ, 2): row 0 (1.5, 2, 0.5), row 1 (1.1, 0.9, 1.0); 0 off the mask
    want = torch.tensor([[0.0, 1.5, 0, 2.0, 0.5], [0.0, 1.1, 0, 0.9, 1.0], [0.0] * 5])
    torch.testing.assert_close(c.weights, want)
    assert float(c.stats["clipped_frac"]) == pytest.approx(1 / 6)  # only ρ = 3 of 6 tokens
    assert float(c.stats["is_weight_mean"]) == pytest.approx(7.0 / 6)  # (1.5+2+0.5+1.1+0.9+1)/6
    assert float(c.stats["rho_max"]) == pytest.approx(3.0)
    assert float(c.stats["rho_mean"]) == pytest.approx(8.0 / 6)  # (1.5+3+0.5+1.1+0.9+1)/6


def test_mis_product_drops_whole_sequences_outside_the_band():
    c = mis(OLD_LP, ROLLOUT_LP, MASK, P)
    # ρ_seq: row 0 1.5·3·0.5 = 2.25 > 2 → dropped; row 1 1.1·0.9·1.0 = 0.99 → kept with weight 0.99
    want = torch.tensor([[0.0] * 5, [0.0, 0.99, 0, 0.99, 0.99], [0.0] * 5])
    torch.testing.assert_close(c.weights, want)
    assert float(c.stats["masked_frac"]) == pytest.approx(0.5)  # 3 of 6 generated tokens
    assert float(c.stats["seq_masked_frac"]) == pytest.approx(0.5)  # 1 of the 2 non-empty sequences
    assert float(c.stats["is_weight_mean"]) == pytest.approx(0.99 * 3 / 6)


def test_mis_geometric_mean_keeps_what_the_product_drops():
    c = mis(OLD_LP, ROLLOUT_LP, MASK, CorrectionParams(seq_ratio="geometric"))
    # geometric means: row 0 2.25^(1/3) = 1.31037, row 1 0.99^(1/3) = 0.99666: both inside [0.5, 2]
    g0, g1 = 2.25 ** (1 / 3), 0.99 ** (1 / 3)
    want = torch.tensor([[0.0, g0, 0, g0, g0], [0.0, g1, 0, g1, g1], [0.0] * 5])
    torch.testing.assert_close(c.weights, want)
    assert float(c.stats["masked_frac"]) == 0.0


def test_icepop_zeroes_tokens_outside_the_band_and_keeps_rho_inside():
    c = icepop(OLD_LP, ROLLOUT_LP, MASK, P)
    # ρ = 3 is outside [0.5, 2] → 0; 0.5 sits on the bound and is kept (closed band)
    want = torch.tensor([[0.0, 1.5, 0, 0.0, 0.5], [0.0, 1.1, 0, 0.9, 1.0], [0.0] * 5])
    torch.testing.assert_close(c.weights, want)
    assert float(c.stats["masked_frac"]) == pytest.approx(1 / 6)
    assert float(c.stats["is_weight_mean"]) == pytest.approx(5.0 / 6)  # (1.5+0+0.5+1.1+0.9+1)/6


@pytest.mark.parametrize("name", ["tis", "mis", "icepop"])
def test_weights_are_detached_and_one_when_sampler_equals_trainer(name):
    old = ROLLOUT_LP.clone().requires_grad_(True)
    c = CORRECTIONS.get(name)(old, ROLLOUT_LP, MASK, P)
    assert not c.weights.requires_grad
    torch.testing.assert_close(c.weights, MASK)  # ρ ≡ 1: every generated token weight 1


@pytest.mark.parametrize("name", ["tis", "mis", "icepop"])
def test_off_mask_logprobs_change_nothing(name):
    noisy = OLD_LP + torch.randn(3, 5, generator=torch.Generator().manual_seed(0)) * 10 * (1 - MASK)
    a = CORRECTIONS.get(name)(OLD_LP, ROLLOUT_LP, MASK, P)
    b = CORRECTIONS.get(name)(noisy, ROLLOUT_LP, MASK, P)
    torch.testing.assert_close(a.weights, b.weights)


def test_weighted_advantages_equal_weighted_per_token_loss():
    """w ≥ 0 applied to A equals w applied to each token's clipped loss (what update.py relies on)."""
    g = torch.Generator().manual_seed(1)
    logprobs = -torch.rand(3, 5, generator=g) * 2
    old = logprobs + torch.randn(3, 5, generator=g) * 0.5  # ratios spread across both clip edges
    adv = torch.randn(3, 5, generator=g) * MASK
    w = tis(OLD_LP, ROLLOUT_LP, MASK, P).weights
    via_adv = ppo_clip_loss(logprobs, old, adv * w, MASK, clip_low=0.2, clip_high=0.28, dual_clip=3.0).loss
    ratio = (logprobs - old).exp()
    per_token = -torch.minimum(ratio * adv, ratio.clamp(0.8, 1.28) * adv)
    per_token = torch.where(adv < 0, torch.minimum(per_token, -3.0 * adv), per_token)
    torch.testing.assert_close(via_adv, (per_token * w * MASK).sum() / MASK.sum())


def test_config_names_the_band_error():
    with pytest.raises(ArlkitError, match="rollout_corr_lower"):
        load_config(None, ["algo.rollout_correction=icepop", "algo.rollout_corr_lower=3"])
    with pytest.raises(ArlkitError, match="rollout_correction"):
        load_config(None, ["algo.rollout_correction=bogus"])


@pytest.mark.parametrize("name", ["tis", "mis", "icepop"])
def test_training_step_runs_with_each_correction_on_bf16_sampling(tiny, tmp_path, name):
    """bf16 sampling on arlkit's engine is a sampler that differs from the fp32 trainer: ρ ≠ 1, and the
    correction's metrics are logged. A band of ±0.1% (verl's Geo-RS default) masks the bf16 mismatch."""
    extra = ["rollout.dtype=bfloat16", "train.seed=3", f"algo.rollout_correction={name}"]
    if name != "tis":
        extra += ["algo.rollout_corr_lower=0.999", "algo.rollout_corr_upper=1.001"]
    cfg = load_config(None, tiny_run_overrides(tiny.sft_dir, tmp_path / "run", *extra))
    s = setup(cfg, Console(quiet=True))
    m = train_step(s, 1)
    assert math.isfinite(m["actor/pg_loss"]) and math.isfinite(m["actor/grad_norm"])
    assert m["rollout_corr/rho_max"] > 1.0  # bf16 sampling: some token's ρ is above 1
    assert 0.0 < m["rollout_corr/is_weight_mean"] < cfg.algo.rollout_corr_cap
    if name == "tis":
        assert 0.0 <= m["rollout_corr/clipped_frac"] < 0.5
    else:
        assert 0.0 < m["rollout_corr/masked_frac"] <= 1.0
