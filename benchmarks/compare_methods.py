"""Train the agentic method recipes of configs/methods/ (GRPO, TAO-RL, APPO, ARPO, DART, joint LoRA, 2-Agent) on
toywiki with equal generation budgets and several seeds, and write a markdown table of held-out EM (mean ± std
over seeds), tool calls per episode, sampled tokens, steps and wall time.

    .venv/bin/python benchmarks/compare_methods.py                       # all recipes, seeds 0 1 2
    .venv/bin/python benchmarks/compare_methods.py --methods grpo appo --seeds 0 --out /tmp/t.md train.steps=5

Equal budgets: a method is charged every token it samples (rollouts and branches; a prefix a branch shares
with its parent was sampled once and is counted once). GRPO runs the recipe's `train.steps`; every other
method runs until it has sampled as many tokens as GRPO did with the same seed (`train.sampled_token_budget`),
with `train.steps` raised to a cap (`--step-cap` × the recipe's steps), so a method that samples more per step
takes fewer steps. `--budget N` gives every method (GRPO included) a fixed budget of N tokens instead.

Each run is `arlkit train configs/methods/<method>.yaml train.seed=<s> ...` in a subprocess; a run whose
summary.json exists is reused, so an interrupted comparison continues where it stopped. The base is evaluated
once (greedy evaluation does not depend on the seed). Extra `key=value` arguments go to every run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from compare_algos import _arlkit, _mean_std, base_metrics

from arlkit.config import load_config

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "configs" / "methods"
METHODS = ["grpo", "tao", "appo", "arpo", "dart", "joint_lora", "two_agent"]
REFERENCE = "grpo"  # the method whose sampled tokens set the others' budget


def run_one(method: str, seed: int, runs: Path, extra: list[str]) -> dict:
    run_dir = runs / f"{method}-s{seed}"
    summary = run_dir / "summary.json"
    if not summary.exists():
        overrides = [f"train.seed={seed}", f"train.run_dir={run_dir}", "train.eval_base=false", *extra]
        _arlkit("train", str(RECIPES / f"{method}.yaml"), *overrides)
    return json.loads(summary.read_text())


def budget_overrides(method: str, budget: float | None, steps_cap: int) -> list[str]:
    """The overrides that give `method` the budget (None: the reference runs its recipe's steps)."""
    if budget is None:
        return []
    return [f"train.sampled_token_budget={int(budget)}", f"train.steps={steps_cap}"]


def table(base: dict, results: dict[str, list[dict]]) -> str:
    lines = [
        "| method | held-out EM | Δ EM vs base | tool calls / episode | sampled tokens | steps | wall time (s) |",
        "|---|---|---|---|---|---|---|",
        f"| base (no RL) | {base['em']:.3f} | — | {base['tool_calls']:.2f} | — | — | — |",
    ]
    for method, runs in results.items():
        em = [r["final"]["em"] for r in runs]
        lines.append(
            f"| {method} | {_mean_std(em)} | {statistics.mean(em) - base['em']:+.3f} "
            f"| {statistics.mean(r['final']['tool_calls'] for r in runs):.2f} "
            f"| {statistics.mean(r['sampled_tokens'] for r in runs):,.0f} "
            f"| {statistics.mean(r['steps'] for r in runs):.1f} "
            f"| {statistics.mean(r['seconds'] for r in runs):.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="*", default=METHODS)
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--budget", type=int, default=None, help="sampled tokens per run; default: GRPO's")
    ap.add_argument("--step-cap", type=int, default=10, help="steps cap, as a multiple of the recipe's steps")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "compare_methods")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "methods_table.md")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = ap.parse_args()
    args.runs.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    steps = load_config(RECIPES / f"{REFERENCE}.yaml", args.overrides).train.steps
    cap = max(1, args.step_cap * steps)
    base = base_metrics(args.runs, args.overrides)
    results: dict[str, list[dict]] = {m: [] for m in args.methods}
    for seed in args.seeds:
        budget = args.budget
        if budget is None:  # the reference's own run sets this seed's budget
            budget = run_one(REFERENCE, seed, args.runs, args.overrides)["sampled_tokens"]
        for m in args.methods:
            fixed = m == REFERENCE and args.budget is None
            extra = [*args.overrides, *budget_overrides(m, None if fixed else budget, cap)]
            results[m].append(run_one(m, seed, args.runs, extra))
    (args.runs / "results.json").write_text(json.dumps({"base": base, "runs": results}, indent=2))
    seeds = " ".join(map(str, args.seeds))
    how = (
        f"{args.budget:,} sampled tokens per run"
        if args.budget
        else f"the tokens {REFERENCE} sampled in {steps} steps"
    )
    extra = " ".join(args.overrides)
    body = (
        f"Held-out EM on {int(base['n'])} toywiki questions about people never seen in training (greedy), after "
        f"equal generation budgets ({how}, rollouts and branches counted once); mean ± std over seeds {seeds}.\n\n"
        f"{table(base, results)}\n\nCommand: `.venv/bin/python benchmarks/compare_methods.py "
        f"{f'{extra} ' if extra else ''}--methods {' '.join(args.methods)} --seeds {seeds}"
        f"{f' --budget {args.budget}' if args.budget else ''}`\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(body)
    print(body)
    print(f"total {time.perf_counter() - t0:.0f} s; raw results in {args.runs / 'results.json'}")


if __name__ == "__main__":
    main()
