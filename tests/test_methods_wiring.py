"""The method pieces as the loop wires them, on hand-built and real trajectories: TAO-RL's shaper touches only
post-tool generated tokens and equals the formula; a DART / 2-Agent policy routes every position to the same
adapter (model) when the engine generates as when the trainer recomputes it."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from arlkit.models.packing import MicroBatching
from arlkit.models.routing import TwoAgentModel, apply_dart, route_of_role, routes_from_roles
from arlkit.rollout.backends import make_runner
from arlkit.rollout.engine import Episode, RolloutParams
from arlkit.train.filters import post_tool
from arlkit.train.shapers import MicroBatch, TaoEntropyShaper
from arlkit.train.update import batch_logprobs
from arlkit.trajectory import Role, Trajectory, collate

R, A, ANS = Role.REASONING, Role.ACTION, Role.ANSWER


def _traj(turns: list[tuple[list[Role], bool]]) -> Trajectory:
    """A prompt of 2 ids, then per turn its generated roles (ids 10, 11, …) and whether it called a tool;
    2 observation ids follow every turn but the last."""
    t = Trajectory()
    t.extend_context([1, 2], Role.PROMPT)
    for k, (roles, called) in enumerate(turns):
        t.add_turn(list(range(10, 10 + len(roles))), roles, [-1.0] * len(roles))
        t.set_turn_outcome([object()] if called else [], 0.0)
        if k + 1 < len(turns):
            t.extend_context([3, 4], Role.OBSERVATION)
    return t


def test_tao_shaper_touches_only_post_tool_tokens_with_the_formula():
    # row 0: prompt(0,1) | turn 0: R R A A (a call) at 2..5 | obs 6,7 | turn 1: R ANS at 8, 9  <- post-tool
    # row 1: prompt(0,1) | turn 0: R R at 2, 3 (no call)
    trajs = [_traj([([R, R, A, A], True), ([R, ANS], False)]), _traj([([R, R], False)])]
    batch = collate(trajs, pad_id=0)
    post = post_tool(batch, trajs)
    assert post.nonzero().tolist() == [[0, 8], [0, 9]]
    ent = torch.zeros(2, 10)
    ent[0, 2:6], ent[0, 8:10], ent[1, 2:4] = torch.tensor([1.0, 2, 3, 4]), torch.tensor([5.0, 6]), 1.0
    ent[1, 3] = 3.0
    ent[0, 0], ent[0, 6] = 50.0, 60.0  # prompt / observation entropies must not enter the z-score
    adv = torch.tensor([[2.0] * 10, [-1.0] * 10]) * batch.loss_mask
    mb = MicroBatch(torch.arange(2), adv, batch.loss_mask, torch.zeros(2, 10), torch.zeros(2, 10), ent)
    out = TaoEntropyShaper(post, alpha=0.1)(mb)
    # valid entropies 1,2,3,4,5,6 | 1,3: mean 25/8 = 3.125; squared deviations 4.515625, 1.265625, 0.015625,
    # 0.765625, 3.515625, 8.265625, 4.515625, 0.015625 sum to 22.875 -> population std sqrt(2.859375) = 1.690968
    std = math.sqrt(22.875 / 8)
    z5, z6 = (5 - 3.125) / std, (6 - 3.125) / std  # 1.108831, 1.700207
    want = adv.clone()
    want[0, 8], want[0, 9] = 2 * (1 + 0.1 * z5), 2 * (1 + 0.1 * z6)  # 2.221766, 2.340041
    assert torch.allclose(out.advantages, want, atol=1e-6)
    assert torch.equal(out.loss_mask, batch.loss_mask)
    # share of valid tokens shaped 2/8; mean |Ã − A| over valid tokens (0.221766 + 0.340041)/8 = 0.070226
    assert out.stats["tao/shaped_token_share"] == pytest.approx(0.25)
    assert out.stats["tao/mean_abs_shift"] == pytest.approx((0.2 * z5 + 0.2 * z6) / 8, abs=1e-6)
    # tool_aware_only=False shapes every valid token (row 1's too) and still nothing outside the loss mask
    wide = TaoEntropyShaper(post, alpha=0.1, tool_aware_only=False)(mb).advantages
    changed = (wide != adv).nonzero().tolist()
    assert [p for p in changed if batch.loss_mask[p[0], p[1]] == 0] == []
    assert len(changed) == 8  # no valid entropy equals the mean 3.125, so every z ≠ 0


def _routed(tiny, kind: str) -> torch.nn.Module:
    """The SFT'd fixture model (it writes tool calls) as DART with nonzero adapters, or 2-Agent with a
    perturbed action model, so the two routes give different logits."""
    base = AutoModelForCausalLM.from_pretrained(tiny.sft_dir)
    torch.manual_seed(0)
    if kind == "two_agent":
        other = copy.deepcopy(base)
        for p in other.parameters():
            p.data.add_(torch.randn_like(p) * 0.05)
        return TwoAgentModel(base, other).eval()
    dart = apply_dart(base, rank=4)
    for name, p in dart.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.1)
    return dart.eval()


@pytest.mark.parametrize("kind", ["dart", "two_agent"])
def test_engine_routes_each_position_as_the_trainer_does(tiny, kind):
    """Record, for every position the engine feeds, the adapter (model) it ran; recompute the trajectory as the
    trainer does and record its routes; they agree position by position, and each is the role of the next
    token (observation and prompt positions use the reasoning adapter: our rule, METHODS.md §6)."""
    routed = _routed(tiny, kind)
    seen: list[tuple[torch.Tensor | None, torch.Tensor]] = []
    # DART's trainer forward runs the decoder body alone (models/head.py: the head is applied in chunks), so
    # the hook sits on the body, which the engine's forwards pass through too; a 2-Agent model runs whole
    hooked = routed.get_decoder() if kind == "dart" else routed
    hook = hooked.register_forward_pre_hook(
        lambda mod, args, kw: seen.append((kw.get("position_ids"), routed.arlkit_route_state.routes.clone())),
        with_kwargs=True,
    )
    params = RolloutParams(max_turns=3, max_new_tokens=16, max_length=400, temperature=1.0)
    engine = make_runner("engine", routed, tiny.tokenizer.pad_token_id, seed=1)
    tok = tiny.tokenizer
    call_open, call_close = (tok.convert_tokens_to_ids(x) for x in ("<tool_call>", "</tool_call>"))
    try:
        for row in tiny.task.rows("train", 3, seed=11):
            # the fixture model rarely opens a call by itself: a scripted first turn opens one, and the engine
            # resumes inside its ACTION span (prefix prefilled, the rest of the call and later turns sampled)
            ep = Episode(tiny.task.make_env(), tok, row, 0, params)
            ep.advance([*tok.encode("Hm", add_special_tokens=False), call_open, 7, 8, 9, call_close])
            seen.clear()
            (br,) = engine.run([ep.branch(ep.traj.turns[0].start + 3)], params)
            t = br.traj
            assert int(Role.ACTION) in t.roles[ep.traj.turns[0].start + 4 :]  # the engine sampled ACTION ids
            gen_route: dict[int, int] = {}
            for pos, routes in seen:  # one episode: prefill rows are unpadded, decode rows one id
                for p, r in zip(pos.flatten().tolist(), routes.flatten().tolist(), strict=True):
                    assert p not in gen_route  # each position is computed once (no prefix recomputed)
                    gen_route[p] = r
            assert sorted(gen_route) == list(range(len(t) - 1))  # the last id is never fed
            seen.clear()
            batch = collate([t], tiny.tokenizer.pad_token_id)
            batch_logprobs(routed, batch, 1.0, MicroBatching(8), routing={"answer_adapter": "reasoning"})
            (train_routes,) = [r for _, r in seen]
            assert train_routes[0].tolist()[: len(t) - 1] == [gen_route[p] for p in range(len(t) - 1)]
            want = routes_from_roles(batch.roles)[0, : len(t) - 1].tolist()
            assert (
                want == [route_of_role(r) for r in t.roles[1:]] == [gen_route[p] for p in range(len(t) - 1)]
            )
            assert 0 in gen_route.values() and 1 in gen_route.values()  # both routes ran
    finally:
        hook.remove()
