"""DART adapters and the 2-Agent pair: routing by the next token's role, isolated adapter gradients,
checkpoints that reload as the same routed policy."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from arlkit.config import AlgoConfig, CriticConfig
from arlkit.models.forward import token_logprobs
from arlkit.models.loading import load_policy, policy_routes
from arlkit.models.routing import (
    TwoAgentModel,
    adapter_parameters,
    apply_dart,
    load_routed,
    routes_from_roles,
    save_routed,
)
from arlkit.models.tiny import demo_trajectory
from arlkit.train.update import Optimisers, UpdateBatch, update
from arlkit.trajectory import Role, collate

DART = {"kind": "dart", "rank": 4, "alpha": 8.0, "answer_adapter": "reasoning", "gradients": "isolated"}


@pytest.fixture(scope="module")
def batch(tiny, rows_by_kind):
    """Real hermes-format demonstrations with tool calls (ACTION spans), observations and answers."""
    rows = rows_by_kind["2hop"][:2] + rows_by_kind["1hop"][:1]
    trajs = [
        demo_trajectory(tiny.task, tiny.tokenizer, r, s)
        for r, s in zip(rows, ("all_hops", "first_hop", "none"), strict=True)
    ]
    return collate(trajs, tiny.tokenizer.pad_token_id)


def test_routes_are_the_next_tokens_role():
    roles = torch.tensor(
        [
            [
                Role.PROMPT,
                Role.REASONING,
                Role.REASONING,
                Role.ACTION,
                Role.ACTION,
                Role.OBSERVATION,
                Role.ANSWER,
            ]
        ]
    )
    # position p routes by the role of token p+1: the call opener (REASONING) is computed by the reasoning
    # adapter; the positions predicting the call's content and closer (ACTION) by the action adapter
    assert routes_from_roles(roles).tolist() == [[0, 0, 1, 1, 0, 0, 0]]
    assert routes_from_roles(roles, answer_adapter="action").tolist() == [[0, 0, 1, 1, 0, 1, 0]]


def test_dart_starts_as_the_base_and_trains_only_adapters(tiny, batch):
    base = AutoModelForCausalLM.from_pretrained(tiny.sft_dir).eval()
    dart = apply_dart(AutoModelForCausalLM.from_pretrained(tiny.sft_dir), rank=4, alpha=8).eval()
    routes = routes_from_roles(batch.roles)
    want = token_logprobs(base, batch.input_ids, batch.attention_mask).logprobs
    got = token_logprobs(dart, batch.input_ids, batch.attention_mask, routes=routes).logprobs
    assert torch.allclose(got, want, atol=1e-6)  # B = 0: the adapters start as no-ops
    trainable = [n for n, p in dart.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    groups = adapter_parameters(dart)
    assert len(groups[0]) == len(groups[1]) == len(trainable) // 2
    with pytest.raises(RuntimeError, match="without routes"):
        dart(input_ids=batch.input_ids)


def _policy(tiny, gradients: str):
    policy = load_policy(tiny.sft_dir, routing={**DART, "gradients": gradients})
    torch.manual_seed(0)
    for groups in adapter_parameters(policy.model):  # distinct non-zero adapters, so routing matters
        for p in groups:
            p.data.normal_(0, 0.05)
    return policy


def _one_update(policy, batch, advantages) -> dict[str, torch.Tensor]:
    before = {n: p.detach().clone() for n, p in policy.model.named_parameters() if p.requires_grad}
    opt = torch.optim.SGD(policy.trainable_parameters(), lr=0.5)
    opts = Optimisers(opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0))
    update(
        policy,
        opts,
        UpdateBatch(batch, advantages),
        AlgoConfig(),
        CriticConfig(),
        1.0,
        torch.Generator().manual_seed(0),
    )
    return {
        n: not torch.equal(before[n], p.detach())
        for n, p in policy.model.named_parameters()
        if p.requires_grad
    }


@pytest.mark.parametrize("role", [Role.ACTION, Role.REASONING])
def test_isolated_gradients_a_role_only_loss_moves_only_its_adapter(tiny, batch, role):
    # advantages only on tokens of `role`: the other adapter computes none of them and must not move
    adv = (batch.roles == int(role)).float() * 1.0
    assert adv.sum() > 0
    moved = _one_update(_policy(tiny, "isolated"), batch, adv)
    mine, other = (".1", ".0") if role == Role.ACTION else (".0", ".1")
    assert any(v for n, v in moved.items() if n.endswith(mine))
    assert not any(v for n, v in moved.items() if n.endswith(other)), [
        n for n, v in moved.items() if v and n.endswith(other)
    ]


def test_shared_gradients_leak_through_attention(tiny, batch):
    # one backward of an ACTION-only loss also reaches the reasoning adapter, through the keys and values of
    # earlier positions it computed: the reason "isolated" exists
    adv = (batch.roles == int(Role.ACTION)).float()
    moved = _one_update(_policy(tiny, "shared"), batch, adv)
    assert any(v for n, v in moved.items() if n.endswith(".0"))


def test_dart_reference_is_the_base_with_adapters_off(tiny, batch):
    policy = _policy(tiny, "isolated")
    base = AutoModelForCausalLM.from_pretrained(tiny.sft_dir).eval()
    want = token_logprobs(base, batch.input_ids, batch.attention_mask).logprobs
    with policy.reference() as ref:
        got = token_logprobs(
            ref, batch.input_ids, batch.attention_mask, routes=policy_routes(policy, batch.roles)
        ).logprobs
    assert torch.allclose(got, want, atol=1e-6)
    routed = token_logprobs(
        policy.model, batch.input_ids, batch.attention_mask, routes=policy_routes(policy, batch.roles)
    ).logprobs
    assert not torch.allclose(routed, want, atol=1e-4)  # and with adapters on, the policy differs


def test_dart_checkpoint_round_trip(tiny, batch, tmp_path):
    policy = _policy(tiny, "isolated")
    save_routed(policy.model, tmp_path, policy.routing)
    # the folder is still a plain HF model: the untouched base
    plain = AutoModelForCausalLM.from_pretrained(tmp_path)
    base = AutoModelForCausalLM.from_pretrained(tiny.sft_dir)
    assert all(
        torch.equal(a, b)
        for a, b in zip(plain.state_dict().values(), base.state_dict().values(), strict=True)
    )
    model, info = load_routed(tmp_path, torch.float32)
    routes = routes_from_roles(batch.roles)
    a = token_logprobs(policy.model, batch.input_ids, batch.attention_mask, routes=routes).logprobs
    b = token_logprobs(model, batch.input_ids, batch.attention_mask, routes=routes).logprobs
    assert torch.equal(a, b) and info["kind"] == "dart"


def test_two_agent_logits_come_from_the_routed_model(tiny, batch):
    reasoner = AutoModelForCausalLM.from_pretrained(tiny.sft_dir).eval()
    actor = AutoModelForCausalLM.from_pretrained(tiny.model_dir).eval()  # a different model
    pair = TwoAgentModel(reasoner, actor)
    routes = routes_from_roles(batch.roles)
    lp = token_logprobs(pair, batch.input_ids, batch.attention_mask, routes=routes).logprobs
    lp_r = token_logprobs(reasoner, batch.input_ids, batch.attention_mask).logprobs
    lp_a = token_logprobs(actor, batch.input_ids, batch.attention_mask).logprobs
    is_action = batch.roles == int(Role.ACTION)  # token t's logits come from position t-1's route
    assert torch.allclose(lp[is_action], lp_a[is_action]) and torch.allclose(lp[~is_action], lp_r[~is_action])
    # an ACTION-only loss reaches the actor model only
    (-(lp * is_action).sum()).backward()
    assert all(p.grad is None or not p.grad.any() for p in reasoner.parameters())
    assert any(p.grad is not None and p.grad.any() for p in actor.parameters())
