"""Synchronous against asynchronous rollouts (issue 22, docs/async.md) on a slow tool: the demo's toywiki task
whose BM25 search sleeps 100–500 ms per call (a web search's latency), the tiny base, the same steps and
samples for every variant.

    .venv/bin/python benchmarks/async_rollouts.py --steps 6 --staleness 0 1 2
    .venv/bin/python benchmarks/async_rollouts.py --backend vllm --partial --staleness 0 1 2   (make install-vllm)

For each rollout.max_staleness (with max_staleness + 1 producers unless --producers says) it runs `arlkit.train` in this process and reports, over the training steps
(evaluation and checkpoints excluded; a step includes publishing its weights): steps per hour, generated
tokens per second, the trainer's idle share (synchronous: the rollout's share of a step, when no update runs;
asynchronous: the time `take` waited for the producer's buffer, plus on vLLM the time a weight sync waited for
generation in flight) and the held-out EM after the run, so speed is not bought with learning; then the
staleness histogram summed over the run's steps. On vLLM with --partial (rollout.partial_rollouts for the
asynchronous runs) it also counts the episodes that ran across a weight sync.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
import zlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from rich.console import Console

import arlkit.train.setup as setup_module
from arlkit.config import load_config
from arlkit.tasks import ToyWikiTask
from arlkit.tools.base import ToolResult
from arlkit.train.loop import train


@dataclass
class SleepyTool:
    """A tool that answers as `inner` does after 100–500 ms, the delay a hash of the arguments (the same
    call waits as long in every variant)."""

    inner: Any
    low_s: float = 0.1
    high_s: float = 0.5

    def __post_init__(self) -> None:
        self.name, self.description, self.parameters = (
            self.inner.name,
            self.inner.description,
            self.inner.parameters,
        )

    def __call__(self, **kwargs: Any) -> ToolResult:
        frac = random.Random(zlib.crc32(json.dumps(kwargs, sort_keys=True).encode())).random()
        time.sleep(self.low_s + (self.high_s - self.low_s) * frac)
        return self.inner(**kwargs)


@dataclass(frozen=True)
class SlowWikiTask(ToyWikiTask):
    """The demo's toywiki task (same world, same tiny base) with a sleeping search."""

    @cached_property
    def search(self) -> Any:
        return SleepyTool(super().search)


def slow_task(cfg: Any) -> SlowWikiTask:
    return SlowWikiTask.from_config(cfg.task)


def run(staleness: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    overrides = [
        f"rollout.backend={args.backend}",
        f"rollout.partial_rollouts={str(bool(args.partial and staleness)).lower()}",
        "model.path=tiny",
        f"task.n_eval={args.n_eval}",
        f"rollout.n={args.n}",
        f"rollout.prompts_per_step={args.prompts}",
        f"rollout.max_staleness={staleness}",
        f"rollout.producers={args.producers or staleness + 1}",
        f"train.steps={args.steps}",
        "train.device=cpu",
        f"train.threads={args.threads}",
        "train.eval_base=false",
        f"train.run_dir={root / f'staleness{staleness}'}",
    ]
    summary = train(load_config(None, overrides), Console(quiet=True))
    rows = [
        json.loads(line) for line in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    ]
    steps = [r for r in rows if "timing_s/update" in r]
    step_s = [
        r["timing_s/rollout"] + r["timing_s/prepare"] + r["timing_s/update"] + r.get("timing_s/publish", 0)
        for r in steps
    ]
    idle = [
        r.get("async/trainer_idle_s", r["timing_s/rollout"]) + r.get("async/publish_wait_s", 0) for r in steps
    ]
    hist: dict[int, float] = {}
    for r in steps:
        for k in range(staleness + 1):
            hist[k] = hist.get(k, 0.0) + r.get(f"async/staleness_{k}", 0.0)
    return {
        "steps_per_hour": 3600 * len(steps) / sum(step_s),
        "gen_tokens_per_s": sum(r["rollout/sampled_tokens"] for r in steps) / sum(step_s),
        "trainer_idle": sum(idle) / sum(step_s),
        "heldout_em": summary["final"].get("em", float("nan")),
        "samples": sum(r["rollout/sampled_tokens"] > 0 for r in steps) * args.prompts * args.n,
        "staleness_hist": hist,
        "across_syncs": sum(r.get("async/episodes_across_syncs", 0) for r in steps),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--n-eval", type=int, default=32)
    p.add_argument("--staleness", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--producers", type=int, default=0, help="rollout.producers (0: max_staleness + 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (train.threads), the same for all")
    p.add_argument("--backend", choices=["engine", "vllm"], default="engine")
    p.add_argument(
        "--partial", action="store_true", help="rollout.partial_rollouts (vLLM) when staleness > 0"
    )
    p.add_argument("--out", default=None, help="a folder to keep the runs in (default: a temporary one)")
    args = p.parse_args()
    setup_module.build_task = slow_task  # setup builds the task through this name
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)  # --out keeps the runs (metrics.jsonl, samples) for a closer look
        results = {k: run(k, args, root) for k in args.staleness}
    print(
        "| max_staleness | steps/h | gen tok/s | trainer idle | held-out EM | staleness histogram (groups) "
        "| episodes across a sync |"
    )
    print("|---|---|---|---|---|---|---|")
    for k, r in results.items():
        hist = ", ".join(f"{lag}: {int(c)}" for lag, c in r["staleness_hist"].items()) if k else "—"
        across = f"{int(r['across_syncs'])}" if args.partial and k else "—"
        print(
            f"| {k} | {r['steps_per_hour']:.0f} | {r['gen_tokens_per_s']:.1f} | {r['trainer_idle']:.0%} "
            f"| {r['heldout_em']:.3f} | {hist} | {across} |"
        )
    print(
        f"backend {args.backend}{' (partial rollouts)' if args.partial else ''}: {args.steps} steps × "
        f"{args.prompts} prompts × {args.n} samples each; EM on {args.n_eval} held-out"
    )


if __name__ == "__main__":
    main()
