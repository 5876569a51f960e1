"""The OpenAI-compatible gateway's overhead: the same toywiki rollout through the built-in ToolEnv path and
through examples/openai_agent.py (the openai SDK over HTTP to arlkit's gateway), in the same run.

    .venv/bin/python benchmarks/gateway.py                  # the demo's tiny base, CPU, 64 episodes
    .venv/bin/python benchmarks/gateway.py --repeats 5 --questions 8 --n 8
    .venv/bin/python benchmarks/gateway.py --backend vllm --repeats 1   # both paths on a vLLM server

Both paths sample from arlkit's engine with the same weights, seed and temperature, and search the same wiki
with the same BM25 tool, so they differ only in the path: on arlkit's engine the built-in one keeps each episode's
KV cache across turns, while the gateway renders each request's messages and re-prefills its context (the
engine keeps no state between requests; on `--backend vllm` both paths are served from vLLM's prefix cache);
the gateway adds HTTP, JSON and the agent's own Python. Episodes differ in what they sample, so the comparison is per generated token: overhead =
(gateway seconds per generated token) / (built-in seconds per generated token) - 1. Each variant runs in a
fresh process, `--repeats` times, interleaved; the table shows medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from _common import load_model, measure, set_threads

ROOT = Path(__file__).resolve().parents[1]


def _runner(backend: str, model, tok, seed: int, n_episodes: int, folder: Path):
    """(runner, server or None): arlkit's engine, or a vLLM server (`make install-vllm`) run turn by turn."""
    import torch

    from arlkit.rollout.continuous import ContinuousEngine
    from arlkit.rollout.engine import TurnSyncRunner

    if backend == "engine":
        return ContinuousEngine(model, tok.pad_token_id, seed=seed), None
    from arlkit.config import VLLMConfig
    from arlkit.rollout.vllm_backend import VLLMGenerator, start_server

    server = start_server(
        model,
        tok,
        VLLMConfig(kv_cache_gb=2),
        folder,
        dtype=torch.float32,
        max_length=1024,
        max_num_seqs=n_episodes,
        seed=seed,
        on_gpu=False,
    )
    return TurnSyncRunner(VLLMGenerator(server, seed=seed, max_concurrency=n_episodes)), server


def _run(path: str, backend: str, questions: int, n: int, seed: int, threads: int | None) -> dict:
    import tempfile

    import torch

    set_threads(threads)
    torch.manual_seed(seed)
    model, tok, task = load_model("tiny", "cpu", "float32")
    rows = [r for r in task.rows("train", questions, seed=seed) for _ in range(n)]
    groups = [i // n for i in range(len(rows))]
    engine, server = _runner(backend, model, tok, seed, len(rows), Path(tempfile.mkdtemp()))
    try:
        return _measure(path, engine, tok, task, rows, groups)
    finally:
        if server is not None:
            server.stop()


def _measure(path: str, engine, tok, task, rows: list[dict], groups: list[int]) -> dict:
    from arlkit.rollout.engine import RolloutParams, rollout

    params = RolloutParams(max_turns=task.max_turns, max_new_tokens=48, max_length=1024, temperature=1.0)
    if path == "builtin":
        rollout(engine, tok, task.make_env, rows[:2], [0, 0], params)  # warm-up, as the gateway's below
        t0 = time.perf_counter()
        trajs = rollout(engine, tok, task.make_env, rows, groups, params)
        wall = time.perf_counter() - t0
        requests = sum(t.n_turns for t in trajs)
        reward = statistics.mean(t.metadata["metrics"]["em"] for t in trajs)
        gen_share = float("nan")
    else:
        sys.path.insert(0, str(ROOT))
        from arlkit.gateway.agents import build_agent_rollout
        from arlkit.rollout.continuous import ContinuousEngine

        agents = build_agent_rollout(
            "examples.openai_agent:run",
            engine,
            tok,
            task.make_env().fmt,
            max_length=1024,
            max_new_tokens=48,
            top_p=1.0,
            concurrent_batches=1 if isinstance(engine, ContinuousEngine) else 8,
        )
        try:
            agents.run(rows[:2], [0, 0], 1.0)  # warm-up: the server, the client library, the BM25 index
            t0 = time.perf_counter()
            trajs = agents.run(rows, groups, 1.0)
            wall = time.perf_counter() - t0
            m = agents.metrics()
        finally:
            agents.close()
        requests = m["gateway/requests_per_episode"] * len(rows)
        reward = statistics.mean(t.metadata["metrics"]["em"] for t in trajs)
        gen_share = m["gateway/generation_share"]
    generated = sum(t.n_generated for t in trajs)
    return {
        "wall_s": wall,
        "generated": generated,
        "tok_s": generated / wall,
        "s_per_ktok": 1000 * wall / generated,
        "requests": requests,
        "em": reward,
        "gen_share": gen_share,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--backend", choices=("engine", "vllm"), default="engine")
    a = ap.parse_args()
    results: dict[str, list[dict]] = {"builtin": [], "gateway": []}
    for r in range(a.repeats):
        for path in results:
            out = measure(_run, path, a.backend, a.questions, a.n, a.seed + r, a.threads)
            results[path].append(out)
            print(f"  run {r + 1} {path:8s} {out['wall_s']:6.2f} s  {out['tok_s']:7.1f} tok/s", flush=True)
    med = {p: {k: statistics.median(o[k] for o in runs) for k in runs[0]} for p, runs in results.items()}
    print(
        f"\n{a.questions} questions x {a.n} samples, tiny base, fp32 CPU, {a.backend}, medians of {a.repeats} runs"
    )
    print(
        f"{'path':9s} {'wall s':>7s} {'gen tok':>8s} {'tok/s':>8s} {'s/ktok':>7s} {'requests':>9s} {'EM':>6s} {'gen share':>9s} {'peak MB':>8s}"
    )
    for p, m in med.items():
        print(
            f"{p:9s} {m['wall_s']:7.2f} {m['generated']:8.0f} {m['tok_s']:8.1f} {m['s_per_ktok']:7.2f} "
            f"{m['requests']:9.0f} {m['em']:6.3f} {m['gen_share']:9.2f} {m['peak_mb']:8.0f}"
        )
    overhead = med["gateway"]["s_per_ktok"] / med["builtin"]["s_per_ktok"] - 1
    print(
        f"\ngateway overhead per generated token: {100 * overhead:+.1f}% (baseline: the built-in ToolEnv path)"
    )


if __name__ == "__main__":
    main()
