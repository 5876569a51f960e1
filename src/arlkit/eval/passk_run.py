"""`arlkit passk`: sample n episodes per question under each tool-round cap T for every policy, then write
PASS@(k,T) curves, boundaries, exclusive solves and efficiency (METHODS.md §8) as JSON, markdown and PNGs.

Run folder (`train.run_dir`): passk.json (every number, and the raw per-question counts), report.md,
passk_curves.png, passk_boundary.png, passk_heatmap_<policy>.png, and policies/<name>/ with the policy's
resolved config.yaml, sample trajectories (`arlkit inspect` reads them) and counts.json: a later run with the
same settings reuses them, so adding a policy or a cap samples only what is new.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from arlkit.config import Config
from arlkit.errors import ArlkitError
from arlkit.eval.analysis_plots import passk_boundary, passk_curves, passk_heatmap
from arlkit.eval.passk import analyse
from arlkit.eval.report import json_safe, passk_report
from arlkit.eval.sampling import (
    load_cached,
    opened_policy,
    patched,
    question_rows,
    sample_counts,
    sampling_settings,
    save_cached,
)
from arlkit.train.setup import build_task, progress, resolve_model_path


def sample_policy(
    cfg: Config, name: str, path: str, rows: list[dict], out: Path, console: Console
) -> dict[str, dict[str, list]]:
    """Counts of one policy for every cap (cached caps are not sampled again)."""
    p = cfg.passk
    folder = out / "policies" / name
    settings = sampling_settings(cfg, path, rows, n=p.n, answer_turns=p.answer_turns)
    data = load_cached(folder, settings) or {"correct": {}, "tool_rounds": {}}
    todo = [t for t in p.caps if str(t) not in data["correct"]]
    if not todo:
        console.print(f"[bold]{name}[/]: counts reused from {folder / 'counts.json'}")
        return data
    with opened_policy(cfg, path, folder, console) as s, progress(console) as prog:
        bar = prog.add_task(f"{name}: episodes", total=len(todo) * len(rows) * p.n, info="")
        for t in todo:
            prog.update(bar, info=f"T = {t}")
            res = sample_counts(
                s,
                rows,
                p.n,
                cap=t,
                answer_turns=p.answer_turns,
                questions_per_batch=p.questions_per_batch,
                n_samples=cfg.train.n_samples,
                on_batch=lambda k: prog.advance(bar, k),
            )
            data["correct"][str(t)] = res.correct
            data["tool_rounds"][str(t)] = res.tool_rounds
            s.run.write_samples(t, res.samples, s.policy.tokenizer, name=f"samples_T{t}")
    save_cached(folder, settings, data)
    return data


def run_passk(cfg: Config, console: Console | None = None) -> dict[str, Any]:
    """Sample every policy of `cfg.passk`, analyse, write the run folder; returns the analysis (passk.json).

    Raises:
        ArlkitError: no policies named, or a policy or the split cannot be loaded.
    """
    console = console or Console()
    p = cfg.passk
    if not p.policies:
        raise ArlkitError("passk.policies is empty: name the policies, e.g. passk.policies.base=tiny")
    t0 = time.perf_counter()
    out = Path(cfg.train.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    task = build_task(cfg)
    rows = question_rows(task, p.split, p.n_questions, cfg.task.eval_seed)
    if not rows:
        raise ArlkitError(f"passk.split {p.split!r} gave no questions")
    # "tiny" names the embedded base of this task: resolved, so its cached counts follow the recipe's build
    paths = {
        name: str(resolve_model_path(patched(cfg, {"model.path": path}), task, console))
        if path == "tiny"
        else path
        for name, path in p.policies.items()
    }
    sampled = {name: sample_policy(cfg, name, path, rows, out, console) for name, path in paths.items()}
    counts = {name: {t: d["correct"][str(t)] for t in p.caps} for name, d in sampled.items()}
    result = analyse(counts, p.n, [str(r.get("kind", "all")) for r in rows])
    result["tool_rounds"] = {
        name: {str(t): sum(d["tool_rounds"][str(t)]) / len(rows) for t in p.caps}
        for name, d in sampled.items()
    }
    result["policy_paths"] = paths
    result["questions"] = [{k: r.get(k) for k in ("id", "question", "answer", "kind")} for r in rows]
    result["counts"] = {name: {str(t): c for t, c in per.items()} for name, per in counts.items()}
    result["seconds"] = time.perf_counter() - t0
    figures = [
        passk_curves(result, out / "passk_curves.png"),
        passk_boundary(result, out / "passk_boundary.png"),
    ]
    figures += [passk_heatmap(result, name, out / f"passk_heatmap_{name}.png") for name in p.policies]
    (out / "passk.json").write_text(json.dumps(json_safe(result), indent=1))
    (out / "report.md").write_text(passk_report(result, [f.name for f in figures]))
    return result
