"""Env steps of a batch one after another vs at once, on a toywiki search that sleeps 100–500 ms per call
(a web search's latency; `async_rollouts.SleepyTool`), in one run.

    .venv/bin/python benchmarks/env_steps.py            # 64 episodes (8 questions × 8), the tiny base

The rollout engine hands every turn that ended in a decode step to `advance_all`, which runs their envs'
steps (the tool calls) on up to ENV_WORKERS threads (rollout/engine.py). Before, they ran one after another,
so a batch's tool waits added up. Same weights, seed and episodes for both: the sampled ids are identical,
only the wall time differs (checked below).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import load_model
from async_rollouts import SlowWikiTask

import arlkit.rollout.engine as engine_module
from arlkit.rollout.continuous import ContinuousEngine
from arlkit.rollout.engine import RolloutParams, rollout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--questions", type=int, default=8)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 16])
    a = p.parse_args()
    torch.set_num_threads(1)
    model, tok, _ = load_model("tiny", "cpu", "float32")
    task = SlowWikiTask()
    rows = [r for r in task.rows("train", a.questions, seed=0) for _ in range(a.n)]
    groups = [i // a.n for i in range(len(rows))]
    params = RolloutParams(max_turns=task.max_turns, max_new_tokens=48, max_length=1024, temperature=1.0)
    walls: dict[int, list[float]] = {w: [] for w in a.workers}
    ids: dict[int, list[list[int]]] = {}
    for _ in range(a.repeats):
        for w in a.workers:
            engine_module.ENV_WORKERS = w
            t0 = time.perf_counter()
            trajs = rollout(
                ContinuousEngine(model, tok.pad_token_id, seed=0), tok, task.make_env, rows, groups, params
            )
            walls[w].append(time.perf_counter() - t0)
            ids[w] = [t.token_ids for t in trajs]
    calls = sum(t.tool_calls[0] for t in trajs)
    same = all(ids[w] == ids[a.workers[0]] for w in a.workers)
    print(f"{len(rows)} episodes, {calls} tool calls of 100-500 ms, tiny base, fp32, 1 torch thread")
    print(f"{'env workers':>11s} {'wall s (median)':>16s}")
    for w in a.workers:
        print(f"{w:11d} {statistics.median(walls[w]):16.2f}")
    base = statistics.median(walls[a.workers[0]])
    for w in a.workers[1:]:
        print(
            f"speed-up with {w} workers: {base / statistics.median(walls[w]):.1f}x; identical episodes: {same}"
        )


if __name__ == "__main__":
    main()
