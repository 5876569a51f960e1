"""Packed training forwards equal padded ones (values and gradients); rows and micro-batches are planned as
documented."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import Qwen2ForCausalLM

from arlkit.models.forward import token_logprobs
from arlkit.models.packing import first_fit_rows, pack, packed_token_logprobs, plan_micro_batches

LENGTHS = [37, 5, 20, 12, 1, 30, 9]


@pytest.fixture(scope="module")
def model(tiny) -> Qwen2ForCausalLM:
    config = copy.deepcopy(tiny.model.config)
    config.initializer_range = 0.2  # outputs that vary along the sequence, so misalignment would show
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).eval()


@pytest.fixture(scope="module")
def batch(model) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(LENGTHS)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (len(LENGTHS), T), generator=g)
    attn = torch.zeros_like(ids)
    for i, n in enumerate(LENGTHS):
        attn[i, :n] = 1
        ids[i, n:] = 0
    return ids, attn


def test_first_fit_decreasing_rows() -> None:
    # width 37: 37 | 30+5+1 (=36) | 20+12 (=32; 9 does not fit) | 9
    assert first_fit_rows(LENGTHS, 37) == [[0], [5, 1, 4], [2, 3], [6]]


def test_pack_restarts_positions_and_unpack_inverts(batch) -> None:
    ids, attn = batch
    lay = pack(ids, attn)
    assert lay.input_ids.shape == (4, 37)
    # row 1 holds sequences 5, 1 and 4 (lengths 30, 5, 1), then a 1-token tail that restarts at 0 too
    assert lay.position_ids[1].tolist() == [*range(30), *range(5), 0, 0]
    assert lay.input_ids[1, 30:35].tolist() == ids[1, :5].tolist()
    # unpacking the packed ids gives back the padded batch (padding as 0)
    assert torch.equal(lay.unpack(lay.input_ids), ids * attn)
    # packed forward tokens: 4 rows × 37 = 148 against 7 × 37 = 259 padded (114 real)
    assert lay.input_ids.numel() == 148 and int(attn.sum()) == 114


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_packed_logprobs_equal_padded(model, batch, temperature) -> None:
    ids, attn = batch
    want = token_logprobs(model, ids, attn, temperature, with_entropy=True)
    got = packed_token_logprobs(model, ids, attn, temperature, with_entropy=True)
    real = attn.bool().clone()
    real[:, 0] = False  # entry 0 of a sequence has no prediction
    assert torch.allclose(got.logprobs[real], want.logprobs[real], atol=1e-5)
    assert torch.allclose(got.entropies[real], want.entropies[real], atol=1e-5)
    assert torch.equal(got.logprobs[~real], torch.zeros(int((~real).sum())))


def test_packed_gradients_equal_padded(model, batch) -> None:
    ids, attn = batch
    weights = torch.linspace(-1, 1, ids.numel()).reshape(ids.shape) * attn
    weights[:, 0] = 0
    grads = []
    for fn in (token_logprobs, packed_token_logprobs):
        m = copy.deepcopy(model).train()
        (fn(m, ids, attn).logprobs * weights).sum().backward()
        grads.append({k: p.grad for k, p in m.named_parameters()})
    for k, g in grads[0].items():
        assert torch.allclose(grads[1][k], g, atol=1e-5), k


def test_micro_batches_respect_token_and_row_budgets() -> None:
    # longest first: 37, 30, 20, 12, 9, 5, 1. Packed, a micro-batch costs the sum of its lengths (≤ 45):
    # 37 | 30 (+20 = 50) | 20+12+9 = 41 (+5 = 46) | 5+1
    assert plan_micro_batches(LENGTHS, 45, max_rows=8, packed=True) == [[0], [5], [2, 3, 6], [1, 4]]
    # padded, rows × its longest (≤ 45): 37 | 30 (2×30) | 20+12 = 2×20 (3×20 = 60) | 9+5+1 = 3×9
    assert plan_micro_batches(LENGTHS, 45, max_rows=8, packed=False) == [[0], [5], [2, 3], [6, 1, 4]]
    # the row cap applies as well; a sequence over the budget gets a micro-batch of its own
    assert plan_micro_batches(LENGTHS, 1000, max_rows=3, packed=True) == [[0, 5, 2], [3, 6, 1], [4]]
    assert plan_micro_batches([50, 10], 20, max_rows=8, packed=True) == [[0], [1]]


@pytest.mark.parametrize("critic", ["value_head", "separate"])
def test_packed_update_equals_padded_update(tiny, tmp_path, critic) -> None:
    """One PPO step (GAE critic, KL to the reference) with packed, token-budgeted micro-batches moves every
    weight as the padded row-count path does. Plain SGD with lr 1 makes each move the (clipped) gradient."""
    from conftest import tiny_run_overrides
    from rich.console import Console

    from arlkit.config import load_config
    from arlkit.train.loop import train_step
    from arlkit.train.setup import setup
    from arlkit.train.update import Optimisers

    variants = {
        "packed": ["algo.packing=true", "algo.micro_batch_tokens=300"],  # several micro-batches of ≤ 300
        "padded": ["algo.packing=false", "algo.micro_batch_tokens=null"],  # the previous path
    }
    moves = {}
    for name, extra in variants.items():
        overrides = tiny_run_overrides(
            tiny.sft_dir, tmp_path / name, "algo.advantage=gae", f"critic.kind={critic}", "algo.kl_coef=0.1"
        )
        s = setup(load_config(None, [*overrides, "train.seed=3", *extra]), Console(quiet=True))
        modules = {"policy": s.policy.model, "critic": s.policy.critic, "head": s.policy.value_head}
        params = {
            f"{m}.{k}": p
            for m, mod in modules.items()
            if mod is not None
            for k, p in mod.named_parameters()
            if p.requires_grad
        }
        actor = [p for k, p in params.items() if not k.startswith("critic.")]
        critics = [p for k, p in params.items() if k.startswith("critic.")]
        opts = []
        for group in (actor, critics):
            opt = torch.optim.SGD(group, lr=1.0) if group else None
            opts += [opt, opt and torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)]
        s.opts = Optimisers(*opts)
        before = {k: p.detach().clone() for k, p in params.items()}
        train_step(s, 1)
        moves[name] = {k: p.detach() - before[k] for k, p in params.items()}
    assert moves["packed"].keys() == moves["padded"].keys()
    assert any(m.abs().max() > 0 for m in moves["padded"].values())
    for k, m in moves["padded"].items():
        assert torch.allclose(moves["packed"][k], m, atol=1e-5), k
