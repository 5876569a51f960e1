"""Train every algorithm recipe of configs/algos/ on toywiki with the same budget and several seeds, and write a
markdown table of held-out EM (mean ± std over seeds), F1, tool calls and wall time.

    .venv/bin/python benchmarks/compare_algos.py                      # all recipes, seeds 0 1 2
    .venv/bin/python benchmarks/compare_algos.py --algos grpo ppo --seeds 0 --out /tmp/t.md train.steps=5

Each run is `arlkit train configs/algos/<algo>.yaml train.seed=<s> ...` in a subprocess; a run whose
summary.json already exists is reused, so an interrupted comparison continues where it stopped. The base is
evaluated once (greedy evaluation does not depend on the seed). Extra `key=value` arguments are passed to
every run (and to the base evaluation).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "configs" / "algos"


def _arlkit(*args: str) -> None:
    cmd = [sys.executable, "-m", "arlkit", *args]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def run_one(algo: str, seed: int, runs: Path, extra: list[str]) -> dict:
    run_dir = runs / f"{algo}-s{seed}"
    summary = run_dir / "summary.json"
    if not summary.exists():
        overrides = [f"train.seed={seed}", f"train.run_dir={run_dir}", "train.eval_base=false", *extra]
        _arlkit("train", str(RECIPES / f"{algo}.yaml"), *overrides)
    result = json.loads(summary.read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r.get("actor/pg_loss", 0.0) for r in records if "rollout/reward" in r]
    result["nonfinite_steps"] = sum(1 for x in losses if x is None or not math.isfinite(x))
    return result


def base_metrics(runs: Path, extra: list[str]) -> dict:
    out = runs / "base.json"
    if not out.exists():
        _arlkit("eval", "--config", str(RECIPES / "base.yaml"), "--out", str(out), *extra,
                f"train.run_dir={runs / 'base'}")  # fmt: skip
    return json.loads(out.read_text())


def _mean_std(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.3f}"
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}"


def table(base: dict, results: dict[str, list[dict]]) -> str:
    lines = [
        "| algorithm | held-out EM | Δ EM vs base | F1 | tool calls / episode | wall time (s) | non-finite steps |",
        "|---|---|---|---|---|---|---|",
        f"| base (no RL) | {base['em']:.3f} | — | {base['f1']:.3f} | {base['tool_calls']:.2f} | — | — |",
    ]
    for algo, runs in results.items():
        em = [r["final"]["em"] for r in runs]
        lines.append(
            f"| {algo} | {_mean_std(em)} | {statistics.mean(em) - base['em']:+.3f} "
            f"| {_mean_std([r['final']['f1'] for r in runs])} "
            f"| {statistics.mean(r['final']['tool_calls'] for r in runs):.2f} "
            f"| {statistics.mean(r['seconds'] for r in runs):.0f} "
            f"| {sum(r['nonfinite_steps'] for r in runs)} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--algos", nargs="*", default=sorted(p.stem for p in RECIPES.glob("*.yaml") if p.stem != "base")
    )
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "compare_algos")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "algorithms_table.md")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = ap.parse_args()
    args.runs.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    base = base_metrics(args.runs, args.overrides)
    results = {a: [run_one(a, s, args.runs, args.overrides) for s in args.seeds] for a in args.algos}
    (args.runs / "results.json").write_text(json.dumps({"base": base, "runs": results}, indent=2))
    seeds = " ".join(map(str, args.seeds))
    body = (
        f"Held-out EM on {int(base['n'])} toywiki questions about people never seen in training (greedy), after "
        f"the budget of `configs/algos/base.yaml`; mean ± std over seeds {seeds}.\n\n{table(base, results)}\n\n"
        # overrides first: after --seeds (nargs="*") argparse would read them as seeds
        f"Command: `.venv/bin/python benchmarks/compare_algos.py {''.join(o + ' ' for o in args.overrides)}"
        f"--algos {' '.join(args.algos)} --seeds {seeds}`\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(body)
    print(body)
    print(f"total {time.perf_counter() - t0:.0f} s; raw results in {args.runs / 'results.json'}")


if __name__ == "__main__":
    main()
