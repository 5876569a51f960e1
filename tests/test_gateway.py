"""The OpenAI-compatible gateway (arlkit/gateway/): the openai SDK as the client, uvicorn as the server, the
tiny model on arlkit's engine (or, for exact tool-call text, a scripted generator behind the same runner).

Covers: recorded trajectories equal the built-in path's for the same generations and their logprobs equal
the trainer's recompute; tool calls in OpenAI format and back; non-append conversations (a template that
strips earlier <think> blocks, an agent that summarises its history) become segments; `n` > 1; OpenAI-style
errors (400, 401, 404, 409); agents that raise, hang or return junk; 64 concurrent sessions; episode-level
advantages of multi-segment episodes, by hand.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import time
from collections.abc import Sequence

import httpx
import openai
import pytest
import torch
from conftest import run_cli, tiny_run_overrides
from rich.console import Console
from transformers import AutoModelForCausalLM

from arlkit.algos.advantages import ADVANTAGES, AdvantageInputs, AdvantageParams
from arlkit.config import load_config
from arlkit.envs.parsing import HermesFormat
from arlkit.errors import ArlkitError
from arlkit.gateway.agents import AgentEpisode, episode_trajectories, load_agent, run_agents
from arlkit.gateway.server import Gateway
from arlkit.gateway.service import GenerationService, Sampling
from arlkit.models.chat_template import CHAT_TEMPLATE
from arlkit.models.forward import token_logprobs
from arlkit.rollout.continuous import ContinuousEngine
from arlkit.rollout.engine import Episode, RolloutParams, TurnSyncRunner
from arlkit.rollout.generator import Generation, SamplingParams
from arlkit.rollout.spans import SpanTags, scanner_for
from arlkit.train.loop import setup, train_step
from arlkit.train.run_dir import RunDir
from arlkit.train.segments import episode_advantages, last_segments, segment_index
from arlkit.trajectory import Role, Trajectory, collate
from arlkit.viewer import load_run, render_page

MAX_LENGTH = 512


class Scripted:
    """A Generator that writes the given texts in turn (for exact tool-call text); logprob -1 per id."""

    def __init__(self, tokenizer, texts: Sequence[str]):
        self.tokenizer, self.texts, self.k = tokenizer, list(texts), 0

    def generate(self, prompts, params: SamplingParams) -> list[Generation]:
        out = []
        for _ in prompts:
            ids = self.tokenizer.encode(self.texts[self.k % len(self.texts)], add_special_tokens=False)
            self.k += 1
            out.append(Generation(ids, [-1.0] * len(ids), [0.5] * len(ids), "stop"))
        return out


def make_gateway(tokenizer, runner, temperature=1.0, api_key=None, max_new_tokens=64) -> Gateway:
    fmt = HermesFormat()
    spans = scanner_for(tokenizer, SpanTags(fmt.call_open, fmt.call_close))
    service = GenerationService(runner, spans, tokenizer.eos_token_id, MAX_LENGTH, gather_s=0.005)
    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=1.0)
    return Gateway(service, tokenizer, fmt, spans, sampling, api_key=api_key).start()


@pytest.fixture(scope="module")
def model(tiny):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny.sft_dir).eval()


@pytest.fixture(scope="module")
def engine_gateway(tiny, model):
    gw = make_gateway(tiny.tokenizer, ContinuousEngine(model, tiny.tokenizer.pad_token_id, seed=3))
    yield gw
    gw.stop()


def run(coro):
    return asyncio.run(coro)


def client_for(gw: Gateway, session_id: str, key: str = "k") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.session_url(session_id), api_key=key, max_retries=0)


async def chat_turns(
    gw: Gateway, session_id: str, first: list[dict], follow_ups: Sequence[str]
) -> list[dict]:
    """A conversation: after each reply, the tool results (for calls) or the next user message."""
    client, messages = client_for(gw, session_id), list(first)
    for follow in [*follow_ups, None]:
        reply = await client.chat.completions.create(model="m", messages=messages)
        msg = reply.choices[0].message
        messages.append(msg.model_dump(exclude_none=True))
        if follow is None:
            break
        if msg.tool_calls:
            messages += [{"role": "tool", "tool_call_id": c.id, "content": follow} for c in msg.tool_calls]
        else:
            messages.append({"role": "user", "content": follow})
    await client.close()
    return messages


class Replay:
    """A message env that answers each turn with the messages an agent's conversation holds after it."""

    def __init__(self, conversation: list[dict]):
        self.conversation = conversation

    def reset(self, row):
        self.k = 1  # the first message is the prompt
        return self.conversation[:1]

    def step(self, message):
        self.k += 1  # the assistant's own message
        obs = []
        while self.k < len(self.conversation) and self.conversation[self.k]["role"] != "assistant":
            obs.append(self.conversation[self.k])
            self.k += 1
        return obs, 0.0, not obs, {}


def test_recorded_episode_equals_builtin_path_and_trainer_logprobs(tiny, model, engine_gateway):
    """Three turns with the real engine: one segment whose ids and roles are what the built-in Episode
    records for the same generated ids and observations, and whose logprobs the trainer recomputes."""
    gw, tok = engine_gateway, tiny.tokenizer
    row = tiny.task.rows("train", 1, seed=11)[0]
    s = gw.open_session(0, row)
    conversation = run(
        chat_turns(gw, s.id, [{"role": "user", "content": row["question"]}], ["(1) Some: result.", "go on"])
    )
    gw.close_session(s.id)
    (traj,) = s.segments()
    assert traj.n_turns == 3
    ep = Episode(Replay(conversation), tok, row, 0, RolloutParams(max_turns=3, max_length=MAX_LENGTH))
    for rec in traj.turns:
        ep.advance(traj.token_ids[rec.start : rec.end])
    assert ep.traj.token_ids == traj.token_ids
    assert ep.traj.roles == traj.roles
    ids = torch.tensor([traj.token_ids])
    with torch.no_grad():
        lp = token_logprobs(model, ids, torch.ones_like(ids)).logprobs[0]
    gen = [i for i, r in enumerate(traj.roles) if r in (Role.REASONING, Role.ACTION, Role.ANSWER)]
    diff = max(abs(float(lp[i]) - traj.logprobs[i]) for i in gen)
    assert diff < 1e-4, diff


def test_tool_calls_in_openai_format_and_back(tokenizer):
    text = 'I will look.<tool_call>{"name": "search", "arguments": {"query": "Gil Pohl"}}</tool_call>'
    gw = make_gateway(tokenizer, TurnSyncRunner(Scripted(tokenizer, [text, "<answer>Jorbar</answer>"])))
    try:
        s = gw.open_session(0, {})

        async def agent():
            client = client_for(gw, s.id)
            messages = [{"role": "user", "content": "Where?"}]
            r1 = await client.chat.completions.create(model="m", messages=messages, logprobs=True)
            m1 = r1.choices[0].message
            messages += [
                m1.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": m1.tool_calls[0].id, "content": "found"},
            ]
            r2 = await client.chat.completions.create(model="m", messages=messages)
            await client.close()
            return r1, r2

        r1, r2 = run(agent())
        c1 = r1.choices[0]
        assert c1.finish_reason == "tool_calls"
        assert c1.message.content == "I will look."
        call = c1.message.tool_calls[0]
        assert call.function.name == "search" and json.loads(call.function.arguments) == {"query": "Gil Pohl"}
        assert len(c1.logprobs.content) == len(r1.model_extra["prompt_token_ids"]) * 0 + len(
            c1.model_extra["token_ids"]
        )
        assert r2.choices[0].message.content == "<answer>Jorbar</answer>"
        gw.close_session(s.id)
        (traj,) = s.segments()  # the tool message continued the same sequence
        assert traj.n_turns == 2
        obs = [i for i, r in enumerate(traj.roles) if r == Role.OBSERVATION]
        assert "found" in tokenizer.decode([traj.token_ids[i] for i in obs])
        assert Role.ACTION in traj.roles  # the call's arguments
        assert s.tool_calls == 1  # the episode's `n_calls` metric
    finally:
        gw.stop()


THINK_STRIPPING = CHAT_TEMPLATE.replace(
    "{{- '<|im_start|>assistant\\n' + (m.content if m.content else '') }}",
    "{%- set c = m.content if m.content else '' %}"
    "{%- if not loop.last and '</think>' in c %}{%- set c = c.split('</think>')[-1] %}{%- endif %}"
    "{{- '<|im_start|>assistant\\n' + c }}",
)


def test_template_that_strips_earlier_think_blocks_makes_segments(tokenizer):
    """Qwen3-style: earlier turns' <think> blocks are not rendered again, so each request after the first
    starts a new segment; every generated id is still recorded exactly once."""
    assert THINK_STRIPPING != CHAT_TEMPLATE
    tok = copy.deepcopy(tokenizer)  # the session's tokenizer keeps its template
    tok.chat_template = THINK_STRIPPING
    texts = ["<think>first thought</think>Hello.", "<think>second</think>Bye."]
    gw = make_gateway(tok, TurnSyncRunner(Scripted(tok, texts)))
    try:
        s = gw.open_session(0, {})
        run(chat_turns(gw, s.id, [{"role": "user", "content": "Hi"}], ["And?"]))
        gw.close_session(s.id)
        segs = s.segments()
        assert len(segs) == 2
        assert [t.n_turns for t in segs] == [1, 1]
        second_prompt = tok.decode(
            [i for i, r in zip(segs[1].token_ids, segs[1].roles, strict=True) if r == Role.PROMPT]
        )
        assert "first thought" not in second_prompt and "Hello." in second_prompt
        for t, text in zip(segs, texts, strict=True):
            gen = [i for i, r in zip(t.token_ids, t.roles, strict=True) if r != Role.PROMPT]
            assert gen == tok.encode(text, add_special_tokens=False)
    finally:
        gw.stop()


def test_agent_that_summarises_its_history_gets_a_new_segment(tokenizer, tmp_path):
    gw = make_gateway(tokenizer, TurnSyncRunner(Scripted(tokenizer, ["one", "two", "three"])))
    try:
        s = gw.open_session(0, {})

        async def agent():
            client = client_for(gw, s.id)
            messages = [{"role": "user", "content": "Start"}]
            for _ in range(2):
                r = await client.chat.completions.create(model="m", messages=messages)
                messages += [
                    r.choices[0].message.model_dump(exclude_none=True),
                    {"role": "user", "content": "more"},
                ]
            summary = [{"role": "user", "content": "Summary so far: one, two. Continue."}]
            await client.chat.completions.create(model="m", messages=summary)
            await client.close()

        run(agent())
        gw.close_session(s.id)
        first, second = s.segments()
        assert first.n_turns == 2 and second.n_turns == 1
        assert tokenizer.decode(second.token_ids).count("Summary so far") == 1
        assert s.requests == 3
        # both segments become rows of one episode; the viewer labels them
        ep = AgentEpisode(s.segments(), 0, 1.0, {}, None, 1.0, 0, s.requests)
        rows = episode_trajectories([ep])
        assert [t.metadata["segment"] for t in rows] == [0, 1] and {t.reward for t in rows} == {1.0}
        run_dir = RunDir(tmp_path / "run", tensorboard=False)
        run_dir.write_samples(1, rows, tokenizer)
        page = render_page(load_run(run_dir.path, tokenizer=tokenizer))
        assert "1 of 2 of episode 0" in page and "2 of 2 of episode 0" in page
        run_dir.close()
    finally:
        gw.stop()


def test_n_choices_the_agent_continues_one(tokenizer):
    gw = make_gateway(tokenizer, TurnSyncRunner(Scripted(tokenizer, ["alpha", "beta", "gamma"])))
    try:
        s = gw.open_session(0, {})

        async def agent():
            client = client_for(gw, s.id)
            messages = [{"role": "user", "content": "Pick"}]
            r = await client.chat.completions.create(model="m", messages=messages, n=2)
            assert [c.message.content for c in r.choices] == ["alpha", "beta"]
            messages += [
                r.choices[1].message.model_dump(exclude_none=True),
                {"role": "user", "content": "ok"},
            ]
            await client.chat.completions.create(model="m", messages=messages)
            await client.close()

        run(agent())
        gw.close_session(s.id)
        (traj,) = s.segments()
        assert "beta" in tokenizer.decode(traj.token_ids) and "alpha" not in tokenizer.decode(traj.token_ids)
        assert s.discarded_choices == 1
    finally:
        gw.stop()


def test_openai_style_errors(tokenizer):
    gw = make_gateway(tokenizer, TurnSyncRunner(Scripted(tokenizer, ["hi"])), api_key="secret")
    try:
        s = gw.open_session(0, {})
        url = gw.session_url(s.id) + "/chat/completions"
        auth = {"Authorization": "Bearer secret"}
        bad_json = httpx.post(url, content=b"{not json", headers=auth)
        assert bad_json.status_code == 400 and "not JSON" in bad_json.json()["error"]["message"]
        no_messages = httpx.post(url, json={"model": "m"}, headers=auth)
        assert no_messages.status_code == 400 and no_messages.json()["error"]["param"] == "messages"
        bad_role = httpx.post(
            url, json={"model": "m", "messages": [{"role": "robot", "content": "x"}]}, headers=auth
        )
        assert bad_role.status_code == 400 and "role" in bad_role.json()["error"]["message"]
        bad_n = httpx.post(
            url, json={"model": "m", "n": 0, "messages": [{"role": "user", "content": "x"}]}, headers=auth
        )
        assert bad_n.status_code == 400

        async def calls():
            with pytest.raises(openai.AuthenticationError):
                await client_for(gw, s.id, key="wrong").chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "x"}]
                )
            with pytest.raises(openai.NotFoundError):
                await client_for(gw, "no-such-session", key="secret").chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "x"}]
                )
            ok = await client_for(gw, s.id, key="secret").chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}]
            )
            assert ok.choices[0].message.content == "hi"
            models = await client_for(gw, s.id, key="secret").models.list()
            assert [m.id for m in models.data] == ["arlkit-policy"]
            gw.close_session(s.id)
            with pytest.raises(openai.ConflictError):  # the episode has ended: its step is closed
                await client_for(gw, s.id, key="secret").chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "x"}]
                )

        run(calls())
        # one session never reads or extends another's records: each id is its own, random
        a, b = gw.open_session(0, {}), gw.open_session(0, {})
        assert a.id != b.id and len(a.id) >= 16
    finally:
        gw.stop()


def test_streaming_returns_the_same_completion(tokenizer):
    text = 'Let me see.<tool_call>{"name": "search", "arguments": {"query": "q"}}</tool_call>'
    gw = make_gateway(tokenizer, TurnSyncRunner(Scripted(tokenizer, [text])))
    try:
        s = gw.open_session(0, {})

        async def stream():
            client = client_for(gw, s.id)
            chunks = [
                c
                async for c in await client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "x"}], stream=True
                )
            ]
            await client.close()
            return chunks

        chunks = run(stream())
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert content == "Let me see." and calls[0].function.name == "search" and finish == ["tool_calls"]
    finally:
        gw.stop()


async def _good(client, row):
    r = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": row["question"]}]
    )
    return 1.0 if "hi" in r.choices[0].message.content else 0.0


async def _raises(client, row):
    await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    raise RuntimeError("agent bug")


async def _hangs(client, row):
    await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    await asyncio.sleep(60)


async def _junk(client, row):
    await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    return "yes"


async def _reports(client, row):
    await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    async with httpx.AsyncClient() as http:
        r = await http.post(str(client.base_url) + "reward", json={"reward": 0.25, "metrics": {"em": 1}})
        assert r.status_code == 200


def test_agent_faults_become_env_errors_and_reward_endpoint(tokenizer):
    gw = make_gateway(tokenizer, TurnSyncRunner(Scripted(tokenizer, ["hi"])))
    try:
        rows = [{"question": f"q{i}"} for i in range(5)]
        t0 = time.perf_counter()
        eps = []
        for agent in (_good, _raises, _hangs, _junk, _reports):
            eps += run_agents(gw, agent, rows[:1], [0], timeout_s=1.5)
        assert time.perf_counter() - t0 < 20
        good, raised, hung, junk, reported = eps
        assert good.error is None and good.reward == 1.0
        assert "agent bug" in raised.error and "TimeoutError" in hung.error and "finite reward" in junk.error
        assert reported.error is None and reported.reward == 0.25 and reported.metrics == {"em": 1.0}
        trajs = episode_trajectories(eps)
        errors = [t for t in trajs if "env_error" in t.metadata]
        assert len(errors) == 3 and all(t.reward == 0.0 for t in errors)
        assert trajs[-1].metadata["metrics"]["em"] == 1.0
    finally:
        gw.stop()


def test_64_concurrent_sessions_are_batched(tiny, model):
    gw = make_gateway(
        tiny.tokenizer, ContinuousEngine(model, tiny.tokenizer.pad_token_id, seed=1), max_new_tokens=8
    )
    try:
        rows = [{"question": f"Who is person {i}?"} for i in range(64)]
        eps = run_agents(gw, _good, rows, list(range(64)), timeout_s=120)
        assert all(e.error is None and len(e.segments) == 1 for e in eps)
        assert len({e.segments[0].metadata["session"] for e in eps}) == 64
        assert gw.service.batches < 64  # requests from many sessions shared forwards
        for e, r in zip(eps, rows, strict=True):  # each session recorded its own prompt
            assert r["question"] in tiny.tokenizer.decode(e.segments[0].token_ids)
    finally:
        gw.stop()


def _seg(group: int, episode: int, k: int, n: int, reward: float, n_gen: int = 2) -> Trajectory:
    t = Trajectory(group_id=group, metadata={"episode": episode, "segment": k, "n_segments": n})
    t.extend_context([1, 2], Role.PROMPT)
    t.add_turn([3] * n_gen, [Role.REASONING] * n_gen, [-0.5] * n_gen)
    t.reward = reward
    return t


def test_episode_advantages_count_each_episode_once():
    """Group 0: episode A (2 segments, reward 1), episode B (1 segment, reward 0). GRPO over the episodes:
    mean 0.5, std (unbiased) 0.7071 -> A: +0.7071, B: -0.7071 on every generated token of every segment. The
    per-segment alternative counts A twice: mean 2/3."""
    trajs = [_seg(0, 0, 0, 2, 1.0), _seg(0, 0, 1, 2, 1.0), _seg(0, 1, 0, 1, 0.0)]
    batch = collate(trajs, pad_id=0)
    inputs = AdvantageInputs(
        batch.token_rewards, batch.loss_mask, batch.group_index, batch.turn, batch.attention_mask
    )
    params = AdvantageParams(1.0, 1.0, "token", True)
    out = episode_advantages(ADVANTAGES.get("grpo"), inputs, params, *segment_index(trajs))
    a = 1 / math.sqrt(2)
    expect = torch.tensor([a, a, -a])[:, None] * batch.loss_mask
    assert torch.allclose(out.advantages, expect, atol=1e-4)
    per_segment = ADVANTAGES.get("grpo")(inputs, params).advantages[:, -1]
    assert torch.allclose(per_segment, torch.tensor([0.5774, 0.5774, -1.1547]), atol=1e-4)
    assert [t.metadata["segment"] for t in last_segments(trajs)] == [1, 0]
    assert segment_index(trajs[2:]) is None


def test_the_openai_agent_example_trains_by_the_command_line(tiny, tmp_path) -> None:
    """`arlkit train examples/openai_agent.yaml` for 2 steps on the fixture model: the agent's episodes go
    through the gateway, train, and are evaluated before and after."""
    run_dir = tmp_path / "run"
    args = tiny_run_overrides(tiny.sft_dir, run_dir, "task.n_eval=4", "rollout.max_new_tokens=32")
    proc = run_cli("train", "examples/openai_agent.yaml", *args, cache=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in logged if "rollout/reward" in m]
    assert len(steps) == 2
    for m in steps:
        assert m["gateway/requests_per_episode"] >= 1 and m["gateway/agent_errors"] == 0
        assert m["rollout/sampled_tokens"] > 0 and math.isfinite(m["actor/pg_loss"])
    evals = [m for m in logged if "eval/em" in m]
    assert len(evals) == 2 and all(m["eval/n"] == 4 for m in evals)
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert samples and all(s["metadata"]["session"] for s in samples)


def test_agent_config_errors_name_the_field(tiny, tmp_path) -> None:
    args = tiny_run_overrides(tiny.sft_dir, tmp_path / "run", "rollout.agent=no_such_module:run")
    proc = run_cli("train", "examples/openai_agent.yaml", *args, cache=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "config field 'rollout.agent': cannot import 'no_such_module:run'" in out
    with pytest.raises(ArlkitError, match=r"rollout\.agent.*must be an async function"):
        load_agent("examples.openai_agent:normalise")
    with pytest.raises(ArlkitError, match=r"rollout\.agent.*not an import path"):
        load_agent("justaname")


@pytest.mark.parametrize("mode", ["episode", "segment"])
def test_a_train_step_on_multi_segment_episodes(tiny, tmp_path, mode) -> None:
    """Two-segment episodes through collect, advantages, update and samples: with `episode`, both segments
    of an episode carry the same advantage; per-episode metrics count episodes, not segments."""
    args = ["rollout.agent=gateway_agents:summarising", f"rollout.gateway.segment_advantage={mode}"]
    cfg = load_config(None, tiny_run_overrides(tiny.sft_dir, tmp_path / "run", *args, "train.n_samples=8"))
    s = setup(cfg, Console(quiet=True))
    try:
        m = train_step(s, 1)
    finally:
        s.agents.close()
    assert m["gateway/segments_per_episode"] == 2 and m["gateway/agent_errors"] == 0
    assert math.isfinite(m["actor/pg_loss"]) and m["actor/grad_norm"] > 0
    assert m["rollout/turns"] == 1  # the last segment's: one turn after the summary
    rows = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 8
    adv = {}
    for r in rows:
        gen = [a for a, role in zip(r["advantages"], r["roles"], strict=True) if role in (1, 2, 4)]
        assert len({round(a, 5) for a in gen}) == 1  # one advantage per row (GRPO)
        adv.setdefault((r["group_id"], r["metadata"]["episode"]), []).append(gen[0])
    pairs = [v for v in adv.values() if len(v) == 2]
    assert pairs
    if mode == "episode":
        assert all(abs(a - b) < 1e-5 for a, b in pairs)


def test_session_by_header_on_the_shared_base_url(tokenizer):
    gw = make_gateway(tokenizer, TurnSyncRunner(Scripted(tokenizer, ["hi"])))
    try:
        s = gw.open_session(0, {})

        async def calls():
            headers = {"X-Session-Id": s.id}
            client = openai.AsyncOpenAI(
                base_url=gw.base_url, api_key="k", max_retries=0, default_headers=headers
            )
            r = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
            assert r.choices[0].message.content == "hi"
            with pytest.raises(openai.BadRequestError, match="no session"):
                await openai.AsyncOpenAI(
                    base_url=gw.base_url, api_key="k", max_retries=0
                ).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
            async with httpx.AsyncClient() as http:
                ok = await http.post(gw.base_url + "/reward", json={"reward": 0.5}, headers=headers)
                bad = await http.post(gw.base_url + "/reward", json={"reward": "high"}, headers=headers)
            assert ok.status_code == 200 and bad.status_code == 400
            await client.close()

        run(calls())
        gw.close_session(s.id)
        assert s.requests == 1 and s.reward == 0.5 and len(s.segments()) == 1
    finally:
        gw.stop()
