"""The RL loop: rollout → reward → advantage → update → log → evaluate → checkpoint, each a named call."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from arlkit.algos.advantages import ADVANTAGES, AdvantageInputs
from arlkit.config import Config
from arlkit.eval.evaluate import episode_metrics, evaluate
from arlkit.eval.plots import plot_curves
from arlkit.models.loading import Policy, load_policy, resolve_device
from arlkit.rollout.engine import RolloutParams, rollout
from arlkit.rollout.generator import HFGenerator
from arlkit.tasks import ToyWikiTask
from arlkit.train.run_dir import RunDir
from arlkit.train.update import policy_update
from arlkit.trajectory import collate


@dataclass
class Setup:
    """Everything the loop needs, built once from the config."""

    cfg: Config
    policy: Policy
    task: ToyWikiTask
    generator: HFGenerator
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    run: RunDir
    train_rows: list[dict]
    eval_rows: list[dict]
    rng: torch.Generator


def build_task(cfg: Config) -> ToyWikiTask:
    t = cfg.task
    return ToyWikiTask(
        seed=t.seed,
        n_people=t.n_people,
        heldout_frac=t.heldout_frac,
        top_k=t.top_k,
        max_turns=t.max_turns,
        fmt=t.fmt,
    )


def resolve_model_path(cfg: Config, task: ToyWikiTask, console: Console) -> Path | str:
    """`tiny` means the embedded base for this task's world, built (minutes) and cached on first use."""
    if cfg.model.path != "tiny":
        return cfg.model.path
    from arlkit.models.tiny import TinyRecipe, cache_root, ensure_base

    recipe = TinyRecipe(task=task)
    cached = cache_root() / f"tiny-{recipe.key()}"
    if (cached / "arlkit_recipe.json").exists():
        return cached
    with _progress(console) as prog:
        bar = prog.add_task("building the tiny base (SFT)", total=recipe.sft.steps, info="")
        return ensure_base(
            recipe, on_step=lambda s, loss: prog.update(bar, completed=s + 1, info=f"loss {loss:.3f}")
        )


def setup(cfg: Config, console: Console) -> Setup:
    torch.manual_seed(cfg.train.seed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    task = build_task(cfg)
    path = resolve_model_path(cfg, task, console)
    lora = None
    if cfg.model.lora is not None:
        lc = cfg.model.lora
        lora = {
            "r": lc.rank,
            "lora_alpha": lc.alpha,
            "lora_dropout": lc.dropout,
            "target_modules": lc.target_modules,
        }
    policy = load_policy(
        path, cfg.model.dtype, device, lora, cfg.algo.kl_coef > 0, cfg.model.gradient_checkpointing
    )
    opt = torch.optim.AdamW(policy.trainable_parameters(), lr=cfg.algo.lr, weight_decay=cfg.algo.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _constant_after_warmup(cfg.algo.warmup_steps))
    run = RunDir(cfg.train.run_dir)
    run.write_config(cfg.model_dump())
    n_train = max(cfg.train.steps, 1) * cfg.rollout.prompts_per_step
    return Setup(
        cfg=cfg,
        policy=policy,
        task=task,
        generator=HFGenerator(
            policy.model, policy.tokenizer.pad_token_id, cfg.rollout.max_batch, cfg.train.seed
        ),
        optimizer=opt,
        scheduler=sched,
        run=run,
        train_rows=task.rows(cfg.task.train_split, n_train, seed=cfg.train.seed + 1000),
        eval_rows=task.rows("heldout", cfg.task.n_eval, seed=cfg.task.eval_seed),
        rng=torch.Generator().manual_seed(cfg.train.seed),
    )


def _constant_after_warmup(warmup: int):
    return (lambda step: min(1.0, (step + 1) / warmup)) if warmup > 0 else (lambda step: 1.0)


def rollout_params(cfg: Config, temperature: float) -> RolloutParams:
    r = cfg.rollout
    return RolloutParams(cfg.task.max_turns, r.max_new_tokens, r.max_length, temperature, r.top_p)


def run_eval(s: Setup, step: int, name: str) -> dict[str, float]:
    res = evaluate(
        s.generator,
        s.policy.tokenizer,
        s.task.make_env,
        s.eval_rows,
        rollout_params(s.cfg, s.cfg.rollout.eval_temperature),
    )
    s.run.log(step, {f"eval/{k}": v for k, v in res.metrics.items()})
    s.run.write_samples(
        step, res.trajectories[: s.cfg.train.n_samples], s.policy.tokenizer, name=f"eval_{name}"
    )
    return res.metrics


def train_step(s: Setup, step: int) -> dict[str, float]:
    """One RL step on `prompts_per_step` prompts × `n` rollouts; returns namespaced metrics."""
    cfg = s.cfg
    P, n = cfg.rollout.prompts_per_step, cfg.rollout.n
    start = (step - 1) * P
    prompts = [s.train_rows[(start + i) % len(s.train_rows)] for i in range(P)]
    rows = [r for r in prompts for _ in range(n)]
    groups = [start + i for i in range(P) for _ in range(n)]
    t0 = time.perf_counter()
    trajs = rollout(
        s.generator,
        s.policy.tokenizer,
        s.task.make_env,
        rows,
        groups,
        rollout_params(cfg, cfg.rollout.temperature),
    )
    t1 = time.perf_counter()
    batch = collate(trajs, s.policy.tokenizer.pad_token_id)
    adv = ADVANTAGES.get(cfg.algo.advantage)(
        AdvantageInputs(batch.token_rewards, batch.loss_mask, batch.group_index),
        norm_by_std=cfg.algo.norm_by_std,
    ).advantages
    stats = policy_update(
        s.policy, s.optimizer, s.scheduler, batch, adv, cfg.algo, cfg.rollout.temperature, s.rng
    )
    t2 = time.perf_counter()
    n_gen = float(batch.loss_mask.sum())
    metrics = {f"rollout/{k}": v for k, v in episode_metrics(trajs).items()}
    metrics.update({f"actor/{k}": v for k, v in stats.items()})
    metrics["actor/lr"] = s.scheduler.get_last_lr()[0]
    metrics["rollout/logprob_diff"] = metrics.pop("actor/logprob_diff", float("nan"))
    metrics["rollout/advantage_abs_mean"] = float((adv.abs() * batch.loss_mask).sum() / max(n_gen, 1.0))
    metrics.update(
        {"timing_s/rollout": t1 - t0, "timing_s/update": t2 - t1, "perf/gen_tokens_per_s": n_gen / (t1 - t0)}
    )
    if cfg.train.n_samples:
        s.run.write_samples(step, trajs[: cfg.train.n_samples], s.policy.tokenizer)
    return metrics


def save_checkpoint(s: Setup, name: str) -> Path:
    """Weights (or LoRA adapters) and tokenizer via save_pretrained, so any HF tool can load them."""
    path = s.run.path / "checkpoints" / name
    s.policy.model.save_pretrained(path)
    s.policy.tokenizer.save_pretrained(path)
    return path


def train(cfg: Config, console: Console | None = None) -> dict[str, Any]:
    """Run RL as configured; evaluates before and after. Returns the summary also written to summary.json."""
    console = console or Console()
    t_start = time.perf_counter()
    s = setup(cfg, console)
    console.print(f"[bold]run folder[/] {s.run.path}  ·  held-out questions: {len(s.eval_rows)}")
    base = run_eval(s, 0, "base") if cfg.task.n_eval else {}
    with _progress(console) as prog:
        bar = prog.add_task("RL", total=cfg.train.steps, info="")
        for step in range(1, cfg.train.steps + 1):
            metrics = train_step(s, step)
            s.run.log(step, metrics)
            info = f"reward {metrics['rollout/reward']:+.3f} · EM {metrics['rollout/em']:.3f}"
            prog.update(bar, completed=step, info=info)
            if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < cfg.train.steps:
                run_eval(s, step, f"step{step}")
            if cfg.train.save_every and step % cfg.train.save_every == 0:
                save_checkpoint(s, f"step_{step}")
    final = run_eval(s, cfg.train.steps, "final") if cfg.task.n_eval else {}
    save_checkpoint(s, "final")
    plot_curves(s.run.read_metrics(), s.run.path / "curves.png")
    s.run.close()
    summary = {
        "base": base,
        "final": final,
        "n_eval": len(s.eval_rows),
        "steps": cfg.train.steps,
        "seconds": time.perf_counter() - t_start,
        "run_dir": str(s.run.path),
    }
    s.run.write_json("summary.json", summary)
    return summary


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
