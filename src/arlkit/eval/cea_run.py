"""`arlkit cea`: Capability Effect Attribution end to end (METHODS.md §7, arXiv 2602.00994).

1. Models: the Base is `model.path`; Reas, Tool and Unified are RL-trained from it by the ordinary loop with
   `algo.loss_roles` = (reasoning, answer), (action,) and all roles (or loaded from `cea.reas/tool/unified`).
   Hybrid-Tool = TwoAgentModel(Base, Tool) and Hybrid-Reas = TwoAgentModel(Reas, Base): one model writes
   reasoning, the other actions, switching at the span boundary (models/routing.py).
2. Success counts: n episodes per question per model at `rollout.temperature`.
3. λ per question from the 6×6 system (eval/cea.py); the share of questions with λ23 < 0.
4. Gradient angles: per-trajectory policy-loss gradients restricted to reasoning vs action tokens.

Run folder (`train.run_dir`): cea.json, report.md, cea_rates.png, cea_lambdas.png, cea_grad_angles.png,
train_<model>/ (RL runs; a finished one with the same config is reused), models/<model>/ (resolved config,
samples, cached counts).
"""

from __future__ import annotations

import functools
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from arlkit.config import Config
from arlkit.eval.analysis_plots import cea_lambdas, cea_rates, grad_angles
from arlkit.eval.cea import MODELS, TERMS, attribute, role_angles
from arlkit.eval.cea_grads import grpo_advantages, role_gradients, usable_rows
from arlkit.eval.report import cea_report, json_safe
from arlkit.eval.sampling import (
    checkpoint_fingerprint,
    load_cached,
    opened_policy,
    patched,
    question_rows,
    sample_counts,
    sampling_settings,
    save_cached,
)
from arlkit.rollout.engine import rollout
from arlkit.train.loop import rollout_params, train
from arlkit.train.setup import build_task, progress, resolve_model_path
from arlkit.trajectory import collate

# the roles each trained model takes loss on; ANSWER counts as reasoning (METHODS.md §1, §6)
TRAINED_ROLES = {
    "reas": ("reasoning", "answer"),
    "tool": ("action",),
    "unified": ("reasoning", "action", "answer"),
}


def role_models(cfg: Config, base: str, out: Path, console: Console) -> dict[str, str]:
    """Checkpoint paths of Base, Reas, Tool and Unified: given in `cea`, reused from a finished training run
    with the same config, or trained now."""
    paths = {"base": base}
    for name, roles in TRAINED_ROLES.items():
        given = getattr(cfg.cea, name)
        if given is not None:
            paths[name] = given
            continue
        run_dir = out / f"train_{name}"
        planned = _training_config(cfg, base, roles, run_dir)
        final = run_dir / "checkpoints" / "final"
        saved = run_dir / "config.yaml"
        same = saved.is_file() and yaml.safe_load(saved.read_text()) == yaml.safe_load(
            yaml.safe_dump(planned.model_dump())
        )
        if same and (final / "config.json").is_file():
            console.print(f"[bold]{name}[/]: reusing {final}")
        else:
            console.print(f"[bold]{name}[/]: RL with loss on {', '.join(roles)} tokens → {run_dir}")
            train(planned, console)
        paths[name] = str(final)
    return paths


def _training_config(cfg: Config, base: str, roles: tuple[str, ...], run_dir: Path) -> Config:
    return patched(cfg, {"model.path": base, "algo.loss_roles": list(roles), "train.run_dir": str(run_dir)})


def model_specs(paths: dict[str, str]) -> dict[str, tuple[str, dict | None]]:
    """(path, routing) of each of the six models, in MODELS order; hybrids are 2-Agent pairs."""
    two_agent = {"kind": "two_agent", "answer_adapter": "reasoning"}
    specs = {name: (paths[name], None) for name in ("base", "reas", "tool", "unified")}
    specs["hybrid_tool"] = (paths["base"], {**two_agent, "action_model_path": paths["tool"]})
    specs["hybrid_reas"] = (paths["reas"], {**two_agent, "action_model_path": paths["base"]})
    return {m: specs[m] for m in MODELS}


def sample_models(
    cfg: Config, specs: dict[str, tuple[str, dict | None]], rows: list[dict], out: Path, console: Console
) -> dict[str, list[int]]:
    """Correct counts out of `cea.n` per question for each model (cached per model)."""
    c = cfg.cea
    correct: dict[str, list[int]] = {}
    for name, (path, routing) in specs.items():
        folder = out / "models" / name
        actor = (routing or {}).get("action_model_path")
        settings = sampling_settings(
            cfg, path, rows, n=c.n, routing=routing, actor=actor and checkpoint_fingerprint(actor)
        )
        cached = load_cached(folder, settings)
        if cached is not None:
            console.print(f"[bold]{name}[/]: counts reused from {folder / 'counts.json'}")
            correct[name] = cached["correct"]
            continue
        with opened_policy(cfg, path, folder, console, routing) as s, progress(console) as prog:
            bar = prog.add_task(f"{name}: episodes", total=len(rows) * c.n, info="")
            res = sample_counts(
                s,
                rows,
                c.n,
                questions_per_batch=c.questions_per_batch,
                n_samples=cfg.train.n_samples,
                on_batch=functools.partial(prog.advance, bar),
            )
            s.run.write_samples(0, res.samples, s.policy.tokenizer)
        correct[name] = res.correct
        save_cached(folder, settings, {"correct": res.correct, "tool_rounds": res.tool_rounds})
    return correct


def gradient_analysis(
    cfg: Config, path: str, rows: list[dict], out: Path, console: Console
) -> dict[str, Any]:
    """Angles between role gradients of `cea.grad_rollouts` trajectories of the `cea.grad_model` policy."""
    c = cfg.cea
    n_questions = math.ceil(c.grad_rollouts / c.grad_group)
    chosen = rows[:n_questions]
    with opened_policy(cfg, path, out / "models" / f"grad_{c.grad_model}", console) as s:
        params = rollout_params(s.cfg, s.cfg.rollout.temperature)
        batch_rows = [r for r in chosen for _ in range(c.grad_group)]
        groups = [q for q in range(len(chosen)) for _ in range(c.grad_group)]
        trajs = rollout(s.generator, s.policy.tokenizer, s.task.make_env, batch_rows, groups, params)
        batch = collate(trajs, s.policy.tokenizer.pad_token_id)
        adv = grpo_advantages(batch)
        rows_used = usable_rows(batch, adv)
        grads = role_gradients(
            s.policy.model,
            batch,
            adv,
            rows_used,
            temperature=s.cfg.rollout.temperature,
            param_pattern=c.grad_params,
        )
    angles = role_angles(grads.reasoning, grads.action)
    lists = {k: getattr(angles, k).tolist() for k in ("cross_role", "same_reasoning", "same_action")}
    means = {k: (sum(v) / len(v) if v else float("nan")) for k, v in lists.items()}
    return {
        "model": c.grad_model,
        "rollouts": len(trajs),
        "used": len(rows_used),  # non-zero advantage and both roles present
        "n_params": grads.n_params,
        "mean_deg": means,
        "angles_deg": lists,
    }


def run_cea(cfg: Config, console: Console | None = None) -> dict[str, Any]:
    """Train or load the models, sample, attribute, measure gradient angles; write the run folder.

    Returns the result also written to cea.json.
    """
    console = console or Console()
    t0 = time.perf_counter()
    c = cfg.cea
    out = Path(cfg.train.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    task = build_task(cfg)
    base = str(resolve_model_path(cfg, task, console))
    paths = role_models(cfg, base, out, console)
    rows = question_rows(task, c.split, c.n_questions, cfg.task.eval_seed)
    correct = sample_models(cfg, model_specs(paths), rows, out, console)
    att = attribute(correct, c.n)
    lam = att.lambdas.tolist()
    summary = {
        "questions": len(rows),
        "kept": len(lam),
        "success_rate": {m: sum(correct[m]) / (c.n * len(rows)) for m in MODELS},
        "lambda_mean": {t: _mean([row[i] for row in lam]) for i, t in enumerate(TERMS)},
        "lambda_median": {t: _median([row[i] for row in lam]) for i, t in enumerate(TERMS)},
        "interference_share": float(att.interference_share),
    }
    result: dict[str, Any] = {"summary": summary, "n": c.n, "paths": paths, "counts": correct}
    result["kept"] = att.kept.tolist()
    result["lambdas"] = lam
    result["questions"] = [{k: r.get(k) for k in ("id", "question", "answer", "kind")} for r in rows]
    figures = [
        cea_rates(MODELS, list(summary["success_rate"].values()), out / "cea_rates.png"),
        cea_lambdas(TERMS, lam, out / "cea_lambdas.png"),
    ]
    if c.grad_rollouts:
        result["gradients"] = gradient_analysis(cfg, paths[c.grad_model], rows, out, console)
        summary["grad_mean_deg"] = result["gradients"]["mean_deg"]
        labels = {"cross_role": "reasoning vs action, same trajectory"}
        labels |= {
            "same_reasoning": "reasoning, across trajectories",
            "same_action": "action, across trajectories",
        }
        angles = {labels[k]: v for k, v in result["gradients"]["angles_deg"].items()}
        figures.append(grad_angles(angles, out / "cea_grad_angles.png"))
    result["seconds"] = time.perf_counter() - t0
    (out / "cea.json").write_text(json.dumps(json_safe(result), indent=1))
    (out / "report.md").write_text(cea_report(result, [f.name for f in figures]))
    return result


def _mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else float("nan")


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")
