"""Multi-turn rollout throughput: the KV-cache engine against a `model.generate` baseline, in the same run.

    .venv/bin/python benchmarks/rollout.py                      # the demo's tiny base, CPU
    .venv/bin/python benchmarks/rollout.py --threads 1
    .venv/bin/python benchmarks/rollout.py --model qwen2-0.5b --device cuda --dtype bfloat16 --cuda-graphs
    .venv/bin/python benchmarks/rollout.py --backends engine,vllm,generate --env always-search

64 episodes (8 toywiki questions × 8 samples, as a GRPO step draws them), up to 4 turns with BM25 search
observations between them (`--env demo`: the demo's env, where the model decides when to answer; `--env
always-search`: every action is run as a search, so every episode takes all its turns). Backends:
- engine:   ContinuousEngine (KV caches kept across turns, continuous batching, shared prompt prefill);
- generate: the baseline most frameworks use: every turn, `model.generate` on each live episode's whole
            left-padded context (GenerateBaseline run turn by turn);
- hf:       arlkit's HFGenerator, also re-prefilling each turn (the previous default);
- vllm:     rollout.backend vllm: a vLLM server (`make install-vllm`) in its own processes, one request per
            episode turn, prefix caching across turns; its own line adds start time, prefix-cache hit rate,
            weight-sync seconds and the served logprobs' distance to this process's forward. Its "fed tok"
            counts the prompt tokens the prefix cache did not serve.
Each variant runs in a fresh process, `--repeats` times, interleaved; the table shows the median run.
Roofline share = generated tokens/s × FLOPs per token ÷ the fp32 (or --dtype) matmul peak measured in this
run, with FLOPs per token = 2 × (non-embedding params + d·V) + 4 × layers × d_attn × mean context
(`_common.flops_per_token`). MFU is the same with every id the backend fed the model (prompts and observations
prefilled, histories re-prefilled by the baselines, generated ids decoded) instead of the generated ids only:
how busy the backend kept the hardware, where the roofline share is how much of it became new tokens.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from _common import flops_per_token, load_model, matmul_peak_gflops, measure, set_threads

from arlkit.envs import ParsedAction, QAScorer, ToolCall, ToolEnv
from arlkit.models.loading import DTYPES
from arlkit.rollout.continuous import ContinuousEngine
from arlkit.rollout.cuda_graph import StaticDecoder
from arlkit.rollout.engine import RolloutParams, TurnSyncRunner, rollout
from arlkit.rollout.generator import GenerateBaseline, HFGenerator
from arlkit.rollout.kv_cache import SlotCache, model_dims


class EveryActionSearches:
    """A tags-format action parser that reads every action as a search for its text, so that every episode
    runs all of its turns with a BM25 observation after each (the `--env always-search` workload)."""

    name, call_open, call_close = "always-search", "<search>", "</search>"

    def parse(self, text: str) -> ParsedAction:
        return ParsedAction((ToolCall("search", {"query": text[:80]}),), (), None)

    def instructions(self) -> str:
        return ""


def env_factory(kind: str, task, max_turns: int):
    if kind == "demo":
        return task.make_env
    return lambda: ToolEnv([task.search], QAScorer(), fmt=EveryActionSearches(), max_turns=max_turns)


def start_vllm(model, tok, args: argparse.Namespace, seed: int):
    """A vLLM server (rollout.backend vllm: `make install-vllm`) on this model's weights, started as a run
    starts its own; returns (its runner, its VLLMSampler, seconds to start)."""
    from arlkit.config import VLLMConfig
    from arlkit.rollout.vllm_backend import VLLMGenerator, VLLMSampler, probe_ids, start_server, sync_folder

    folder = sync_folder(None)
    start = time.perf_counter()
    server = start_server(
        model,
        tok,
        VLLMConfig(),
        folder,
        dtype=DTYPES[args.dtype],
        max_length=args.max_length,
        max_num_seqs=args.episodes,
        seed=seed,
        on_gpu=args.device == "cuda",
    )
    started = time.perf_counter() - start
    gen = VLLMGenerator(server, seed=seed, max_concurrency=args.episodes)
    sampler = VLLMSampler(
        server, gen, folder, dtype=DTYPES[args.dtype], check_every=0, tolerance=1.0, probe_ids=probe_ids(tok)
    )
    return TurnSyncRunner(gen), sampler, started


def group_peak_mb(pgid: int) -> float:
    """Σ of the peak RSS (VmHWM) of every process in a process group (the vLLM server and its engine core):
    an upper bound of the group's peak, as the processes need not peak together."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:  # field 5 of /proc/pid/stat: the process group
                continue
            for line in (stat.parent / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1024


def make_backend(name: str, model, pad_id: int, args: argparse.Namespace, seed: int):
    if name == "engine":
        decode = "cuda_graph" if args.cuda_graphs else "dynamic"
        return ContinuousEngine(model, pad_id, max_slots=args.episodes, seed=seed, decode=decode)
    if name == "generate":
        torch.manual_seed(seed)  # model.generate samples from the global generator
        return TurnSyncRunner(GenerateBaseline(model, pad_id))
    return TurnSyncRunner(HFGenerator(model, pad_id, seed=seed))


def run_once(name: str, args: argparse.Namespace, seed: int) -> dict:
    """One timed rollout of all episodes (after a small warm-up rollout) in this process."""
    set_threads(args.threads)
    model, tok, task = load_model(args.model, args.device, args.dtype)
    rows = [r for r in task.rows("rl", args.episodes // args.group, seed=11) for _ in range(args.group)]
    groups = [i // args.group for i in range(len(rows))]
    params = RolloutParams(args.max_turns, args.max_new_tokens, args.max_length, args.temperature, args.top_p)
    vllm = None
    if name == "vllm":
        backend, vllm, started = start_vllm(model, tok, args, seed)
        parity_start = vllm.check(model)
    else:
        backend = make_backend(name, model, tok.pad_token_id, args, seed)
    make_env = env_factory(args.env, task, args.max_turns)
    rollout(backend, tok, make_env, rows[:2], groups[:2], params)  # warm-up (allocations, graphs)
    if vllm is not None:
        vllm.metrics()  # counts the warm-up's requests: the hit rate below is the timed rollout's
    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trajs = rollout(backend, tok, make_env, rows, groups, params)
    if args.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    gen = [i for t in trajs for i, r in enumerate(t.roles) if r in (1, 2, 4)]  # positions of generated ids
    mean_ctx = sum(gen) / max(len(gen), 1)
    split = {}
    if name == "engine":  # what the engine fed the model: prefilled and decoded ids
        st = backend.stats
        model_tokens = st.prefill_tokens + st.decode_tokens
        split = {
            "decode_s": st.decode_s,
            "prefill_s": st.prefill_s,
            "steps": st.steps,
            "rows": st.decode_tokens,
        }
    else:  # turn by turn, each turn feeds its whole context, then its generated ids
        model_tokens = sum(rec.end for t in trajs for rec in t.turns)
    if vllm is not None:
        hit_rate = vllm.metrics()["rollout/vllm_prefix_cache_hit_rate"]
        # as after an update: the weights written, loaded by the server, the prefix cache reset
        syncs = []
        for _ in range(3):  # each after a small change to every weight, as an optimiser step makes
            with torch.no_grad():
                for w in model.parameters():
                    w.add_(torch.randn_like(w) * 1e-3)
            vllm.refresh(model)
            syncs.append(vllm.last_sync_s)
        split = {
            "start_s": started,
            "hit_rate": hit_rate,
            "sync_s": statistics.median(syncs),
            "parity_start": parity_start,
            "parity": vllm.check(model),
            "server_peak_mb": group_peak_mb(vllm.server.proc.pid),
        }
        model_tokens = round(sum(rec.end for t in trajs for rec in t.turns) * (1 - hit_rate))
        vllm.close()
    return split | {
        "gen_tokens": len(gen),
        "model_tokens": model_tokens,
        "seconds": seconds,
        "turns": sum(t.n_turns for t in trajs) / len(trajs),
        "flops_per_token": flops_per_token(model, mean_ctx),
        "reward": sum(t.reward for t in trajs) / len(trajs),
        "mean_context": mean_ctx,
    }


def ceiling_once(args: argparse.Namespace, context: int) -> dict:
    """Seconds of one bare decode forward of the engine at its best: every one of the --episodes rows
    resident, each at position `context`, no prefill, sampling or env. An upper bound on the engine's
    throughput for this model and context: no scheduling can beat the forward it runs. Timed through the
    engine's fixed-shape step (`StaticDecoder`: all rows, all positions), captured with --cuda-graphs."""
    set_threads(args.threads)
    model, _, _ = load_model(args.model, args.device, args.dtype)
    layers, kv_heads, head_dim = model_dims(model)
    dev = torch.device(args.device)
    cache = SlotCache(layers, args.episodes, context + 1, kv_heads, head_dim, DTYPES[args.dtype], dev)
    decoder = StaticDecoder(model, cache, capture=args.cuda_graphs)
    ids = torch.randint(0, model.config.vocab_size, (args.episodes,)).tolist()
    pos = [context] * args.episodes

    def step() -> None:
        decoder(ids, pos, pos)  # each row at `context`, writing its key there
        if args.device == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):
        step()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < 2.0:
        step()
        n += 1
    return {"seconds": (time.perf_counter() - start) / n, "flops_per_token": flops_per_token(model, context)}


def median_run(runs: list[dict]) -> dict:
    """The run of median generated tokens/s (the upper of the middle two for an even count)."""
    return sorted(runs, key=lambda r: r["gen_tokens"] / r["seconds"])[len(runs) // 2]


def roofline_share(tokens_per_s: float, flops_per_token: float, peak_gflops: float) -> float:
    return tokens_per_s * flops_per_token / (peak_gflops * 1e9)


def peak_once(args: argparse.Namespace) -> dict:
    set_threads(args.threads)
    return {"gflops": matmul_peak_gflops(args.device, DTYPES[args.dtype])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny", help="tiny | qwen2-0.5b | a local model folder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--episodes", type=int, default=64)
    p.add_argument("--group", type=int, default=8, help="samples per question")
    p.add_argument("--max-turns", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--env",
        default="demo",
        choices=["demo", "always-search"],
        help="demo: the demo's toywiki env (the model decides when to answer); always-search: every action is "
        "run as a search, so every episode takes all --max-turns turns",
    )
    p.add_argument("--backends", default="engine,generate,hf")
    p.add_argument("--cuda-graphs", action="store_true", help="engine decode as a captured CUDA graph")
    args = p.parse_args()
    names = args.backends.split(",")
    peaks, runs = [], {n: [] for n in names}
    for rep in range(args.repeats):
        peaks.append(measure(peak_once, args)["gflops"])
        for n in names:
            runs[n].append(measure(run_once, n, args, 100 + rep))
    peak = max(peaks)
    device = (
        torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads or 'default'} threads"
    )
    print(
        f"model {args.model} · {args.dtype} · {device} · matmul peak {peak:.1f} GFLOP/s (runs: "
        f"{', '.join(f'{x:.1f}' for x in peaks)})"
    )
    print(
        f"env {args.env} · {args.episodes} episodes (groups of {args.group}), ≤{args.max_turns} turns, ≤{args.max_new_tokens} "
        f"new tokens per turn, temperature {args.temperature}; median of {args.repeats} runs per backend"
    )
    head = f"{'backend':<10}{'gen tok':>9}{'turns/ep':>9}{'wall s':>8}{'gen tok/s':>11}{'× generate':>11}"
    print(head + f"{'peak MB':>9}{'roofline':>10}{'fed tok':>9}{'MFU':>7}{'runs gen tok/s':>26}")
    rates = {n: [r["gen_tokens"] / r["seconds"] for r in runs[n]] for n in names}
    base = statistics.median(rates["generate"]) if "generate" in names else None
    for n in names:
        med = median_run(runs[n])
        rate = med["gen_tokens"] / med["seconds"]
        share = roofline_share(rate, med["flops_per_token"], peak)
        mfu = roofline_share(med["model_tokens"] / med["seconds"], med["flops_per_token"], peak)
        ratio = f"{statistics.median(rates[n]) / base:.2f}" if base else "-"
        print(
            f"{n:<10}{med['gen_tokens']:>9}{med['turns']:>9.2f}{med['seconds']:>8.2f}{rate:>11.0f}{ratio:>11}"
            f"{med['peak_mb']:>9.0f}{share:>10.1%}{med['model_tokens']:>9}{mfu:>7.1%}"
            f"{' / '.join(f'{x:.0f}' for x in rates[n]):>26}"
        )
    if base is None:
        print("(no 'generate' backend in --backends: no ratio)")
    if "vllm" in names:
        med = median_run(runs["vllm"])
        print(
            f"vllm's median run: server start {med['start_s']:.1f} s, prefix-cache hit rate "
            f"{med['hit_rate']:.1%} of prompt tokens, weight sync {med['sync_s']:.3f} s (write, load, cache "
            f"reset; median of 3), served logprobs against this process's forward: mean |Δ| "
            f"{med['parity_start']:.2g} at start, {med['parity']:.2g} after 3 syncs of changed weights, "
            f"server processes' peak RSS {med['server_peak_mb']:.0f} MB (this process: "
            f"{med['peak_mb']:.0f} MB, in the table)"
        )
    if "engine" in names:
        med = median_run(runs["engine"])
        other = med["seconds"] - med["decode_s"] - med["prefill_s"]
        print(
            f"engine's median run: decode forwards {med['decode_s']:.2f} s ({med['steps']} steps, "
            f"{med['rows'] / max(med['steps'], 1):.1f} rows each on average), prefill forwards "
            f"{med['prefill_s']:.2f} s, the rest {other:.2f} s (sampling, bookkeeping, env)"
        )
        ctx = round(med["mean_context"])
        ceil = measure(ceiling_once, args, ctx)
        rate = args.episodes / ceil["seconds"]
        print(
            f"ceiling: one bare decode forward of {args.episodes} rows at context {ctx} takes "
            f"{ceil['seconds'] * 1e3:.2f} ms = {rate:.0f} tok/s = "
            f"{roofline_share(rate, ceil['flops_per_token'], peak):.1%} "
            "of the roofline (no prefill, sampling or env: what no scheduling can beat)"
        )


if __name__ == "__main__":
    main()
