"""The continuous-batching engine against the turn-by-turn reference runners: identical greedy ids over multi-turn
episodes with observations, logprobs within 1e-4, only new ids prefilled, shared prefixes copied, LoRA applied,
forks and branches that continue the same tool loop."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import Qwen2ForCausalLM

from arlkit.envs import ParsedAction, QAScorer, ToolCall, ToolEnv
from arlkit.errors import ArlkitError
from arlkit.models.forward import token_logprobs
from arlkit.rollout.continuous import ContinuousEngine
from arlkit.rollout.engine import Episode, RolloutParams, TurnSyncRunner, rollout, share_prompt_prefill
from arlkit.rollout.generator import GenerateBaseline, HFGenerator
from arlkit.rollout.kv_cache import SlotCache
from arlkit.tools.search import BM25Search
from arlkit.trajectory import GENERATED_ROLES


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These forwards are tiny: on a busy 2-core runner a second OpenMP thread only adds spin-waiting."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model(tiny) -> Qwen2ForCausalLM:
    """The tiny architecture with init std 0.2 (at 0.02 greedy decoding repeats one token)."""
    config = copy.deepcopy(tiny.model.config)
    config.initializer_range = 0.2
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).eval()


class AlwaysSearch:
    """An action format that reads every action as a search for its first 30 characters, so a random model's
    episodes run several turns with real observations (BM25 documents) between them."""

    name, call_open, call_close = "always", "<tool_call>", "</tool_call>"

    def parse(self, text: str) -> ParsedAction:
        return ParsedAction((ToolCall("search", {"query": text[:30]}),), (), None)

    def instructions(self) -> str:
        return ""


@pytest.fixture(scope="module")
def make_env(task):
    # three documents per search, so that some episodes outgrow max_length (the context_length finish)
    search = BM25Search([(d.title, d.text) for d in task.world.docs], top_k=3)
    return lambda: ToolEnv([search], QAScorer(), fmt=AlwaysSearch(), max_turns=4)


@pytest.fixture(scope="module")
def rows(task) -> list[dict]:
    prompts = task.rows("train", 5, seed=3)
    return [r for r in prompts for _ in range(3)]  # groups of 3 samples share a prompt


GREEDY = RolloutParams(max_turns=4, max_new_tokens=10, max_length=400, temperature=0.0)


def _run(backend, tokenizer, make_env, rows, params=GREEDY):
    return rollout(backend, tokenizer, make_env, rows, list(range(len(rows))), params)


def _assert_same(got, want, atol=1e-4) -> None:
    for g, w in zip(got, want, strict=True):
        assert g.token_ids == w.token_ids and g.roles == w.roles and g.turn == w.turn
        assert [(t.start, t.end, t.finish_reason) for t in g.turns] == [
            (t.start, t.end, t.finish_reason) for t in w.turns
        ]
        assert g.metadata["finish_reason"] == w.metadata["finish_reason"]
        for a, b in ((g.logprobs, w.logprobs), (g.entropies, w.entropies)):
            assert [math.isnan(x) for x in a] == [math.isnan(x) for x in b]
            assert torch.allclose(torch.tensor(a).nan_to_num(), torch.tensor(b).nan_to_num(), atol=atol)


@pytest.fixture(scope="module")
def reference(model, tokenizer, make_env, rows):
    """Greedy trajectories of the HF generator, turn by turn (each turn re-prefills the whole context)."""
    return _run(HFGenerator(model, tokenizer.pad_token_id), tokenizer, make_env, rows)


def test_reference_episodes_are_multi_turn(reference) -> None:
    assert min(t.n_turns for t in reference) >= 2  # observations between turns
    assert {t.metadata["finish_reason"] for t in reference} >= {"max_turns", "context_length"}


@pytest.mark.parametrize("decode", ["dynamic", "static"])
def test_greedy_engine_equals_turn_by_turn_generator(
    model, tokenizer, make_env, rows, reference, decode
) -> None:
    # 7 slots for 15 episodes: later episodes wait for a free slot (continuous batching); "static" decodes all
    # slots over all positions at fixed shapes, the step a GPU captures as a CUDA graph
    engine = ContinuousEngine(model, tokenizer.pad_token_id, max_slots=7, decode=decode)
    _assert_same(_run(engine, tokenizer, make_env, rows), reference)
    assert engine.cache.max_len == GREEDY.max_length + 1  # grew from 257 positions as episodes lengthened
    # a later, smaller run reuses the pool (static: all 7 slots run, 3 of them live)
    _assert_same(_run(engine, tokenizer, make_env, rows[:3]), reference[:3])


def test_model_generate_baseline_gives_the_same_ids(model, tokenizer, make_env, rows, reference) -> None:
    """The benchmark's baseline: `model.generate` on the whole context every turn."""
    _assert_same(_run(GenerateBaseline(model, tokenizer.pad_token_id), tokenizer, make_env, rows), reference)


def test_engine_prefills_each_id_once_and_copies_shared_prompts(
    model, tokenizer, make_env, rows, monkeypatch
) -> None:
    written, decode_views = [], []
    bind = SlotCache.bind

    def counting_bind(self, layout) -> None:  # positions written by a forward, idle rows' scratch excluded
        written.append(int((layout.write_pos < self.max_len - 1).sum()))
        if layout.valid is None:  # a decode step
            decode_views.append(layout.rows_are_prefix)
        bind(self, layout)

    monkeypatch.setattr(SlotCache, "bind", counting_bind)
    engine = ContinuousEngine(model, tokenizer.pad_token_id, max_slots=15)
    trajs = _run(engine, tokenizer, make_env, rows)
    # Every id of a trajectory but its last is fed to the model exactly once (the last sampled id is never
    # fed), except what a group's 2nd and 3rd samples copy from the 1st: their prompt minus its last id.
    prompt_len = [t.roles.count(0) for t in trajs]
    copied = sum(prompt_len[i] - 1 for i in range(len(trajs)) if i % 3 != 0)
    assert sum(written) == sum(len(t) - 1 for t in trajs) - copied
    st = engine.stats
    assert (st.prefill_tokens + st.decode_tokens, st.copied_tokens) == (sum(written), copied)
    # finished episodes leave holes that are closed, so every decode step reads a prefix of the pool
    assert len(decode_views) == st.steps and all(decode_views)
    # history is never prefilled again: the HF reference feeds each turn's whole context
    n_ref = sum(t.turns[k].start for t in trajs for k in range(t.n_turns))
    assert sum(written) < n_ref / 2


def test_sampled_logprobs_match_the_trainer_and_seed_determines_ids(model, tokenizer, make_env, rows) -> None:
    params = RolloutParams(max_turns=3, max_new_tokens=10, max_length=400, temperature=0.7, top_p=0.9)
    runs = [
        _run(
            ContinuousEngine(model, tokenizer.pad_token_id, max_slots=6, seed=s),
            tokenizer,
            make_env,
            rows,
            params,
        )
        for s in (3, 3, 4)
    ]
    assert [t.token_ids for t in runs[0]] == [t.token_ids for t in runs[1]]
    assert [t.token_ids for t in runs[0]] != [t.token_ids for t in runs[2]]
    # the samples of a group differ although they share the prompt prefill
    assert len({tuple(t.token_ids) for t in runs[0][:3]}) > 1
    for t in runs[0]:
        ids = torch.tensor([t.token_ids])
        ref = token_logprobs(model, ids, torch.ones_like(ids), 0.7, with_entropy=True)
        gen = torch.tensor([r in GENERATED_ROLES for r in t.roles])
        assert torch.allclose(torch.tensor(t.logprobs)[gen], ref.logprobs[0][gen], atol=1e-4)
        assert torch.allclose(torch.tensor(t.entropies)[gen], ref.entropies[0][gen], atol=1e-4)


def test_engine_runs_lora_adapters(model, tokenizer, make_env, rows) -> None:
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules="all-linear"))
    torch.manual_seed(1)
    for name, p in lora.named_parameters():
        if "lora_B" in name:  # B starts at 0; make the adapters change the outputs
            p.data.normal_(0, 0.5)
    lora.eval()
    some = rows[:6]
    ref = _run(HFGenerator(lora, tokenizer.pad_token_id), tokenizer, make_env, some)
    got = _run(ContinuousEngine(lora, tokenizer.pad_token_id, max_slots=4), tokenizer, make_env, some)
    _assert_same(got, ref)
    base = _run(HFGenerator(model, tokenizer.pad_token_id), tokenizer, make_env, some)
    assert [t.token_ids for t in got] != [t.token_ids for t in base]  # the adapters were applied


def _episodes(task, tokenizer, make_env, rows, params=GREEDY) -> list[Episode]:
    eps = [Episode(make_env(), tokenizer, r, i, params) for i, r in enumerate(rows)]
    share_prompt_prefill(eps)
    return eps


@pytest.mark.parametrize("runner", ["engine", "turn_sync"])
def test_greedy_forks_continue_the_same_tool_loop(model, task, tokenizer, make_env, rows, runner) -> None:
    """A fork after the first env step continues independently; greedy, it must reproduce its parent exactly,
    tool calls included, without re-running the parent's tools for its prefix."""
    backend = (
        ContinuousEngine(model, tokenizer.pad_token_id, max_slots=4)
        if runner == "engine"
        else TurnSyncRunner(HFGenerator(model, tokenizer.pad_token_id))
    )
    parents = _episodes(task, tokenizer, make_env, rows[:3])
    forked_at: dict[int, int] = {}

    def spawn(ep: Episode) -> list[Episode]:
        if ep.traj.n_turns != 1:
            return []  # fork once, after the first turn of a parent (a fork starts with one turn done)
        forked_at[id(ep)] = len(ep.context_ids())
        return [ep.fork()]

    out = backend.run(parents, GREEDY, spawn)
    assert len(out) == 6 and out[:3] == parents
    for parent, fork in zip(parents, out[3:], strict=True):
        n = forked_at[id(parent)]
        assert fork.traj.branch_pos == n - 1 and fork.done
        assert fork.traj.token_ids == parent.traj.token_ids  # same context, greedy: same continuation
        # the prefix's call records are the parent's own (same latency: the tool did not run again) ...
        assert fork.traj.turns[0].calls == parent.traj.turns[0].calls
        # ... and the fork ran its later calls itself, with the same arguments and results
        fork_calls, parent_calls = (
            [[(c.name, c.arguments, c.ok) for c in turn.calls] for turn in t.turns]
            for t in (fork.traj, parent.traj)
        )
        assert fork_calls == parent_calls
        assert fork.env.snapshot().turns == parent.env.snapshot().turns == parent.traj.n_turns
        assert fork.env._records is not parent.env._records  # independent env state


def test_branch_resumes_inside_a_turn(model, task, tokenizer, make_env, rows) -> None:
    (done,) = ContinuousEngine(model, tokenizer.pad_token_id).run(
        _episodes(task, tokenizer, make_env, rows[:1]), GREEDY
    )
    t = done.traj
    rec = t.turns[1]
    pos = rec.start + 3  # inside the second turn
    branch = done.branch(pos)
    assert branch.context_ids() == t.token_ids[: pos + 1] and not branch.done
    assert branch.env.snapshot().turns == 1 and branch.messages == done.messages[: len(branch.messages)]
    with pytest.raises(ArlkitError, match="not a generated token"):
        done.branch(0)  # a prompt token
    # greedy: the branch regenerates exactly the rest of the original episode
    (again,) = ContinuousEngine(model, tokenizer.pad_token_id).run([branch], GREEDY)
    assert again.traj.token_ids == t.token_ids and again.traj.branch_pos == pos
    assert again.traj.logprobs[: pos + 1] == t.logprobs[: pos + 1]  # the prefix keeps its recorded values
    assert [(x.start, x.end) for x in again.traj.turns] == [(x.start, x.end) for x in t.turns]
    assert done.traj.token_ids == t.token_ids and done.done  # the original is untouched
    # sampled branches keep the prefix verbatim and diverge after it
    hot = RolloutParams(max_turns=4, max_new_tokens=10, max_length=400, temperature=1.0)
    branches = [done.branch(pos) for _ in range(4)]
    for b in branches:
        b.params = hot
    out = ContinuousEngine(model, tokenizer.pad_token_id, seed=5).run(branches, hot)
    assert all(b.traj.token_ids[: pos + 1] == t.token_ids[: pos + 1] for b in out)
    assert len({tuple(b.traj.token_ids) for b in out}) > 1


def test_resume_turn_regenerates_a_whole_turn(model, task, tokenizer, make_env, rows) -> None:
    (done,) = ContinuousEngine(model, tokenizer.pad_token_id).run(
        _episodes(task, tokenizer, make_env, rows[:1]), GREEDY
    )
    t = done.traj
    again = done.resume_turn(2)
    assert again.context_ids() == t.token_ids[: t.turns[2].start] and again.partial.ids == []
    assert again.env.snapshot().turns == 2 and again.traj.n_turns == 2
    with pytest.raises(ArlkitError, match="turn 9 does not exist"):
        done.resume_turn(9)
    (out,) = ContinuousEngine(model, tokenizer.pad_token_id).run([again], GREEDY)
    assert out.traj.token_ids == t.token_ids  # greedy: the same turn 2 and what follows


def _routed(model, kind: str):
    from arlkit.models.routing import TwoAgentModel, apply_dart

    torch.manual_seed(2)
    if kind == "two_agent":
        other = Qwen2ForCausalLM(model.config).eval()  # a second, different random model
        return TwoAgentModel(copy.deepcopy(model), other).eval()
    dart = apply_dart(copy.deepcopy(model), rank=4)
    for name, p in dart.named_parameters():
        if "lora_B" in name:  # B starts at 0; make each adapter change the outputs
            p.data.normal_(0, 0.3)
    return dart.eval()


@pytest.mark.parametrize("kind", ["dart", "two_agent"])
def test_routed_policy_generates_as_it_is_trained(model, task, tokenizer, make_env, rows, kind) -> None:
    """A role-routed policy (METHODS.md §6) routes each position by the role of the next token while
    generating, exactly as the trainer's forward does: recorded logprobs equal the training recomputation."""
    from arlkit.models.packing import MicroBatching
    from arlkit.rollout.backends import make_runner
    from arlkit.train.update import batch_logprobs
    from arlkit.trajectory import Role, collate

    routed = _routed(model, kind)
    ep = Episode(make_env(), tokenizer, rows[0], 0, GREEDY)
    call_open, call_close = (tokenizer.convert_tokens_to_ids(x) for x in ("<tool_call>", "</tool_call>"))
    ep.advance([*tokenizer.encode("Hm", add_special_tokens=False), call_open, 7, 8, 9, call_close])
    start = ep.traj.turns[0].start
    branch = ep.branch(start + 3)  # inside the call: generation resumes in an ACTION span
    hot = RolloutParams(max_turns=3, max_new_tokens=10, max_length=400, temperature=1.0)
    branch.params = hot
    (out,) = make_runner("engine", routed, tokenizer.pad_token_id, seed=4).run([branch], hot)
    t = out.traj
    gen = torch.tensor([i > start + 3 and r in GENERATED_ROLES for i, r in enumerate(t.roles)])
    roles = torch.tensor(t.roles)
    assert (roles[gen] == Role.ACTION).any() and (roles[gen] == Role.REASONING).any()  # both routes ran
    batch = collate([t], tokenizer.pad_token_id)
    want = batch_logprobs(routed, batch, 1.0, MicroBatching(8), routing={"answer_adapter": "reasoning"})[0]
    got = torch.tensor(t.logprobs)
    assert torch.allclose(got[gen], want[gen], atol=1e-4)
    # and routing matters: every position through the reasoning route gives other logprobs
    plain = token_logprobs(
        routed, batch.input_ids, batch.attention_mask, routes=torch.zeros_like(batch.roles)
    )
    assert not torch.allclose(got[gen], plain.logprobs[0][gen], atol=1e-3)
    with pytest.raises(ArlkitError, match=r"needs rollout\.backend=engine"):
        make_runner("hf", routed, tokenizer.pad_token_id)
