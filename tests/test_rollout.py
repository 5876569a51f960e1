"""The HF generator (greedy parity with transformers, logprobs, stops), the rollout engine (token-in/token-out)
and BM25 retrieval over the default ToyWiki world."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import pytest
import torch
from transformers import Qwen2ForCausalLM

from arlkit.models.forward import token_logprobs
from arlkit.rollout.engine import Episode, RolloutParams, rollout
from arlkit.rollout.generator import Generation, HFGenerator, SamplingParams, draw, sample_next
from arlkit.tasks import ToyWikiTask
from arlkit.trajectory import GENERATED_ROLES, Role


@pytest.fixture(scope="module")
def model(tiny) -> Qwen2ForCausalLM:
    """The tiny random architecture with a larger init (std 0.2): at new_model's std 0.02, greedy decoding
    just repeats one token, which would make the parity checks below trivial."""
    config = copy.deepcopy(tiny.model.config)
    config.initializer_range = 0.2
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).eval()


@pytest.fixture(scope="module")
def prompts(task, tokenizer, rows_by_kind) -> list[list[int]]:
    """Three real episode prompts cut to different lengths, so the batch needs left padding."""
    rows = rows_by_kind["1hop"][:3]
    full = [Episode(task.make_env(), tokenizer, r, 0, RolloutParams()).traj.token_ids for r in rows]
    out = [full[0], full[1][:-3], full[2][:7]]
    assert len({len(p) for p in out}) == 3
    return out


def _hf_greedy(model, prompts: Sequence[Sequence[int]], pad: int, eos: int, n: int) -> list[list[int]]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad)
    attn = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        attn[i, width - len(p) :] = 1
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=attn,
            do_sample=False,
            max_new_tokens=n,
            eos_token_id=eos,
            pad_token_id=pad,
        )
    rows = []
    for row in out[:, width:].tolist():
        rows.append(row[: row.index(eos) + 1] if eos in row else row)
    return rows


def test_greedy_matches_transformers_generate(model, tokenizer, prompts) -> None:
    eos, pad, n = tokenizer.eos_token_id, tokenizer.pad_token_id, 12
    gen = HFGenerator(model, pad)
    got = gen.generate(prompts, SamplingParams(max_new_tokens=n, temperature=0.0, stop_token_ids=(eos,)))
    want = _hf_greedy(model, prompts, pad, eos, n)
    assert [g.ids for g in got] == want
    assert all(len(set(g.ids)) > 3 for g in got)  # not a degenerate repetition
    for g in got:
        assert g.finish_reason == ("stop" if g.ids[-1] == eos else "length")
        assert len(g.ids) == len(g.logprobs) == len(g.entropies)
    # greedy logprobs are those of the untempered distribution
    for p, g in zip(prompts, got, strict=True):
        seq = torch.tensor([list(p) + g.ids])
        ref = token_logprobs(model, seq, torch.ones_like(seq), 0.0, with_entropy=True)
        assert torch.allclose(torch.tensor(g.logprobs), ref.logprobs[0, len(p) :], atol=1e-4)
        assert torch.allclose(torch.tensor(g.entropies), ref.entropies[0, len(p) :], atol=1e-4)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_match_recomputed(model, tokenizer, prompts, temperature) -> None:
    pad = tokenizer.pad_token_id
    params = SamplingParams(max_new_tokens=10, temperature=temperature)
    got = HFGenerator(model, pad, seed=3).generate(prompts, params)
    assert all(g.finish_reason == "length" and len(g.ids) == 10 for g in got)
    # the same seed samples the same ids; another seed other ids
    assert [g.ids for g in HFGenerator(model, pad, seed=3).generate(prompts, params)] == [g.ids for g in got]
    assert [g.ids for g in HFGenerator(model, pad, seed=4).generate(prompts, params)] != [g.ids for g in got]
    # recompute on a right-padded batch with the trainer's function at the same temperature
    seqs = [list(p) + g.ids for p, g in zip(prompts, got, strict=True)]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad)
    attn = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], attn[i, : len(s)] = torch.tensor(s), 1
    ref = token_logprobs(model, ids, attn, temperature).logprobs
    for i, (p, g) in enumerate(zip(prompts, got, strict=True)):
        want = ref[i, len(p) : len(p) + len(g.ids)]
        assert torch.allclose(torch.tensor(g.logprobs), want, atol=1e-4), (i, g.logprobs, want)
    if temperature != 1.0:  # and temperature matters: the untempered logprobs differ
        plain = token_logprobs(model, ids, attn, 1.0).logprobs
        assert not torch.allclose(
            plain[0, len(prompts[0]) : len(seqs[0])], torch.tensor(got[0].logprobs), atol=1e-3
        )


def test_stop_tokens_end_rows_and_are_kept(model, tokenizer, prompts) -> None:
    gen = HFGenerator(model, tokenizer.pad_token_id)
    free = gen.generate(prompts, SamplingParams(max_new_tokens=10, temperature=0.0))
    assert all(g.finish_reason == "length" and len(g.ids) == 10 for g in free)
    # a stop token that row 0 generates at a position j > 0 for the first time
    g0 = free[0].ids
    j = next(j for j in range(1, len(g0)) if g0[j] not in g0[:j])
    stop = g0[j]
    stopped = gen.generate(
        prompts, SamplingParams(max_new_tokens=10, temperature=0.0, stop_token_ids=(stop,))
    )
    assert stopped[0].ids == g0[: j + 1] and stopped[0].finish_reason == "stop"
    assert any(stop not in f.ids for f in free)  # some row runs to the length limit
    for f, s in zip(free, stopped, strict=True):
        if stop in f.ids:  # greedy: identical up to the stop, which is kept as the last id
            k = f.ids.index(stop)
            assert (s.ids, s.finish_reason) == (f.ids[: k + 1], "stop")
            assert s.logprobs == pytest.approx(f.logprobs[: k + 1], abs=1e-5)
        else:
            assert (s.ids, s.finish_reason) == (f.ids, "length")


class Recording:
    """Wraps a generator and records every (prompt, generation) pair it returns."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls: list[list[tuple[list[int], Generation]]] = []

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Generation]:
        out = self.inner.generate(prompts, params)
        self.calls.append([(list(p), g) for p, g in zip(prompts, out, strict=True)])
        return out


def test_rollout_keeps_generated_ids_verbatim(model, task, tokenizer, rows_by_kind) -> None:
    rows = [rows_by_kind["1hop"][0], rows_by_kind["2hop"][0], rows_by_kind["3hop"][0]]
    rows2 = [r for r in rows for _ in range(2)]
    groups = [g for g in range(3) for _ in range(2)]
    rec = Recording(HFGenerator(model, tokenizer.pad_token_id, seed=1))
    params = RolloutParams(max_turns=3, max_new_tokens=12, max_length=1024, temperature=1.0)
    trajs = rollout(rec, tokenizer, task.make_env, rows2, groups, params)
    assert [t.group_id for t in trajs] == groups
    assert [t.metadata["id"] for t in trajs] == [r["id"] for r in rows2]
    # the stop ids the engine asks for: eos and the last id of </tool_call>
    # (checked on the first call's params indirectly: every "stop" turn ends with one of them)
    stops = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("</tool_call>")}
    used = set()
    for t in trajs:
        assert t.metadata["finish_reason"] in {"answer", "no_action", "max_turns", "context_length"}
        for rec_turn in t.turns:
            s, e = rec_turn.start, rec_turn.end
            matches = [
                (c, i)
                for c, call in enumerate(rec.calls)
                for i, (p, g) in enumerate(call)
                if p == t.token_ids[:s] and g.ids == t.token_ids[s:e] and (c, i) not in used
            ]
            assert matches, "a turn's ids differ from what the generator produced"
            c, i = matches[0]
            used.add((c, i))
            g = rec.calls[c][i][1]
            assert t.logprobs[s:e] == g.logprobs
            assert t.entropies[s:e] == g.entropies
            assert rec_turn.finish_reason == g.finish_reason
            if g.finish_reason == "stop":
                assert g.ids[-1] in stops
        # logprobs are NaN exactly on tokens the model did not generate
        for role, lp in zip(t.roles, t.logprobs, strict=True):
            assert math.isnan(lp) == (role not in GENERATED_ROLES)
        assert len(t.token_ids) == len(t.roles) == len(t.logprobs) == len(t.entropies) == len(t.turn)
    # every generation the generator returned went into exactly one trajectory
    assert len(used) == sum(len(c) for c in rec.calls)


def _char_ids(tokenizer, text: str) -> list[int]:
    """One id per character: a valid but non-canonical tokenisation of `text`."""
    out = []
    for ch in text:
        (i,) = tokenizer.encode(ch, add_special_tokens=False)
        out.append(i)
    return out


class Scripted:
    """A generator that answers turn 1 with a search call and turn 2 with the answer, spelled character by
    character (with single-id delimiters), so that any re-tokenisation would change the ids."""

    def __init__(self, tokenizer, rows: list[dict]) -> None:
        self.tok, self.rows, self.turn, self.emitted = tokenizer, rows, 0, []

    def generate(self, prompts, params):
        t = self.tok
        out = []
        for k, _ in enumerate(prompts):
            row = self.rows[k]
            if self.turn == 0:
                ids = [
                    *_char_ids(t, "Hm."),
                    t.convert_tokens_to_ids("<tool_call>"),
                    *_char_ids(t, f'{{"name": "search", "arguments": {{"query": "{row["hops"][0]}"}}}}'),
                    t.convert_tokens_to_ids("</tool_call>"),
                ]
            else:
                ids = [
                    *_char_ids(t, "So"),
                    t.convert_tokens_to_ids("<answer>"),
                    *_char_ids(t, f" {row['answer']}"),
                    t.convert_tokens_to_ids("</answer>"),
                    t.eos_token_id,
                ]
            lp = [-0.01 * (j + 1) for j in range(len(ids))]
            out.append(Generation(ids, lp, [1.0] * len(ids), "stop"))
        self.emitted.append([g.ids for g in out])
        self.turn += 1
        return out


def test_rollout_never_retokenises_scripted_turns(task, tokenizer, rows_by_kind) -> None:
    rows = rows_by_kind["1hop"][:2]
    gen = Scripted(tokenizer, rows)
    trajs = rollout(
        gen, tokenizer, task.make_env, rows, [0, 1], RolloutParams(max_turns=3, max_new_tokens=64)
    )
    for k, t in enumerate(trajs):
        assert t.n_turns == 2
        for turn_no, rec in enumerate(t.turns):
            ids = t.token_ids[rec.start : rec.end]
            assert ids == gen.emitted[turn_no][k]
            # the canonical tokenisation of the same text is different (shorter), so this is a real check
            canonical = tokenizer.encode(tokenizer.decode(ids), add_special_tokens=False)
            assert canonical != ids and len(canonical) < len(ids)
            assert t.logprobs[rec.start : rec.end] == [-0.01 * (j + 1) for j in range(len(ids))]
        # the env understood the character-level call and answer: one successful search, correct answer
        (call,) = t.turns[0].calls
        assert call.ok and call.name == "search" and call.arguments == {"query": rows[k]["hops"][0]}
        assert t.metadata["answer"] == rows[k]["answer"] and t.reward == 1.0
        obs = t.token_ids[t.turns[0].end : t.turns[1].start]
        assert set(t.roles[t.turns[0].end : t.turns[1].start]) == {Role.OBSERVATION}
        assert rows[k]["hops"][0] in tokenizer.decode(obs)
        # roles of the character-level turn still follow the single-id delimiters
        r0 = t.roles[t.turns[0].start : t.turns[0].end]
        assert r0 == [Role.REASONING] * 4 + [Role.ACTION] * (len(r0) - 4)


def test_length_budget_truncates_every_per_token_list(task, tokenizer, rows_by_kind) -> None:
    row = rows_by_kind["1hop"][0]
    n_prompt = len(Episode(task.make_env(), tokenizer, row, 0, RolloutParams()).traj)
    ep = Episode(task.make_env(), tokenizer, row, 0, RolloutParams(max_length=n_prompt + 5))
    ids = _char_ids(tokenizer, "abcdefghij")
    ep.advance(ids, [-1.0] * 10, [2.0] * 10, "length")
    t = ep.traj
    assert t.token_ids[n_prompt:] == ids[:5] and t.turns[0].finish_reason == "length"
    assert len(t.logprobs) == len(t.token_ids)
    assert len(t.entropies) == len(t.token_ids)


def test_bm25_finds_the_gold_doc_for_one_hop_questions() -> None:
    task = ToyWikiTask()  # the default world (1500 people)
    qs = task.world.questions("heldout", 200, seed=11, kinds={"1hop": 1.0})
    assert len(qs) == 200 and {q.kind for q in qs} == {"1hop"}
    hits = sum(task.search.retrieve(q.hops[0], k=1) == [q.support[0]] for q in qs)
    assert hits >= 0.95 * len(qs), hits
    # the tool's text output puts the gold doc first
    q = qs[0]
    text = task.search(query=q.hops[0]).text
    assert text.startswith(f"(1) {q.hops[0]}: {task.world.docs[q.support[0]].text}")


def test_draw_matches_its_weights_and_never_draws_a_zero() -> None:
    weights = torch.tensor([0.2, 0.0, 1.2, 0.6, 0.0])  # unnormalised, zeros inside and at the end
    n = 40_000
    ids = draw(weights.expand(n, -1), torch.Generator().manual_seed(0))
    freq = torch.bincount(ids, minlength=5).float() / n
    assert torch.allclose(freq, weights / weights.sum(), atol=0.01)  # 4 std of a 0.6 share
    assert freq[1] == 0 and freq[4] == 0


def test_top_p_samples_the_nucleus_and_records_the_full_distribution() -> None:
    p = torch.tensor([0.05, 0.5, 0.15, 0.3])
    n = 40_000
    ids, lp, _ = sample_next(p.log().expand(n, -1), 1.0, 0.7, torch.Generator().manual_seed(0))
    freq = torch.bincount(ids, minlength=4).float() / n
    # sorted 0.5, 0.3, 0.15, 0.05: mass before each 0, 0.5, 0.8, 0.95, so only the first two are kept
    assert torch.allclose(freq, torch.tensor([0.0, 0.625, 0.0, 0.375]), atol=0.01)
    assert torch.allclose(lp, p.log()[ids])  # the logprob is that of the untruncated distribution
