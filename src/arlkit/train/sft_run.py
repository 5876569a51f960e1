"""`arlkit sft`: fine-tune a policy on your own conversations (`sft.data`, train/conversations.py) or on
scripted expert demonstrations, so the base / SFT / RL comparison of
PASS@(k,T) (arXiv 2604.14877: "SFT shrinks the boundary") runs inside arlkit.

The demonstrations are the toy task's scripted episodes of one strategy (`sft.strategy`; toywiki's gold expert
is `all_hops`), on questions of `task.train_split`, tokenised through the rollout engine's own Episode
(`models.tiny.demo_trajectory`), so they carry exactly the ids, roles and observation glue rollouts have.
The run folder is that of `arlkit train`: config.yaml, metrics.jsonl (`sft/loss`), evaluations before and
after, curves.png, summary.json and checkpoints/final.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any

from rich.console import Console

from arlkit.config import Config
from arlkit.envs.message_env import episode_env
from arlkit.errors import ArlkitError
from arlkit.eval.plots import plot_curves
from arlkit.models.tiny import demo_trajectory
from arlkit.rollout.spans import SpanTags, scanner_for
from arlkit.train.conversations import conversation_trajectories, load_conversations
from arlkit.train.loop import run_eval, save_checkpoint
from arlkit.train.setup import Setup, progress, setup
from arlkit.train.sft import SFTParams, sft
from arlkit.trajectory import Trajectory


def demonstrations(s: Setup) -> list[Trajectory]:
    """`sft.n_demos` scripted demonstrations of `sft.strategy` on questions of `task.train_split`.

    Raises:
        ArlkitError: the task has no scripted demonstrations, or not of that strategy.
    """
    sc = s.cfg.sft
    strategies = getattr(s.task, "demo_strategies", ())
    if not strategies or not callable(getattr(s.task, "demo_actions", None)):
        raise ArlkitError(
            f"task {s.cfg.task.name!r} has no scripted demonstrations: arlkit sft needs the task to define "
            "`demo_strategies` (a tuple of strategy names) and `demo_actions(row, strategy)` (the assistant "
            "messages of a demonstration on `row`, as text, in the env's tool-call format)"
        )
    mix = sc.strategy_mix or {sc.strategy: 1.0}
    for name in mix:
        if name not in strategies:
            field = "sft.strategy_mix" if sc.strategy_mix else "sft.strategy"
            raise ArlkitError(f"{field} {name!r} is not one of the task's: {', '.join(strategies)}")
    # a seed offset of its own: the RL loop draws its prompts from the same split with train.seed + 1000
    rows = s.task.rows(s.cfg.task.train_split, sc.n_demos, seed=s.cfg.train.seed + 2000)
    rng = random.Random(s.cfg.train.seed + 2000)
    picks = rng.choices(list(mix), weights=list(mix.values()), k=len(rows))
    return [
        demo_trajectory(s.task, s.policy.tokenizer, row, pick) for row, pick in zip(rows, picks, strict=True)
    ]


def own_conversations(s: Setup) -> list[Trajectory]:
    """The rows of `sft.data`'s conversations, tool calls read with the task env's delimiters."""
    env = episode_env(s.task.make_env())
    spans = scanner_for(s.policy.tokenizer, SpanTags(env.fmt.call_open, env.fmt.call_close))
    convs = load_conversations(s.cfg.sft.data)
    return conversation_trajectories(convs, s.policy.tokenizer, spans, s.cfg.rollout.max_length)


def run_sft(cfg: Config, console: Console | None = None) -> dict[str, Any]:
    """Fine-tune `model.path` as `cfg.sft` says; evaluates before (if train.eval_base) and after.

    Returns the summary also written to summary.json.

    Raises:
        ArlkitError: a routed policy (SFT trains one model), or a bad strategy.
    """
    console = console or Console()
    if cfg.model.routing is not None:
        raise ArlkitError("model.routing: arlkit sft trains one plain (or LoRA) policy; remove model.routing")
    t_start = time.perf_counter()
    s = setup(cfg, console)
    sc = s.cfg.sft
    if sc.data:
        demos = own_conversations(s)
        n_conv = len({d.metadata["conversation"] for d in demos})
        described = f"{n_conv} conversations of {sc.data} ({len(demos)} rows)"
    else:
        demos = demonstrations(s)
        kinds = Counter(d.metadata["strategy"] for d in demos)
        described = ", ".join(f"{n} '{k}'" for k, n in kinds.most_common())
    console.print(f"[bold]run folder[/] {s.run.path}  ·  demonstrations: {described}")
    base = run_eval(s, 0, "base") if cfg.task.n_eval and cfg.train.eval_base else {}
    params = SFTParams(
        steps=sc.steps,
        batch_size=sc.batch_size,
        lr=sc.lr,
        warmup=sc.warmup,
        seed=cfg.train.seed,
        micro_batch_tokens=sc.micro_batch_tokens,
        precision=cfg.train.precision,
    )
    with progress(console) as prog:
        bar = prog.add_task("SFT", total=sc.steps, info="")

        def on_step(step: int, loss: float) -> None:
            s.run.log(step + 1, {"sft/loss": loss})
            prog.update(bar, completed=step + 1, info=f"loss {loss:.3f}")

        losses = sft(s.policy.model, demos, s.policy.tokenizer.pad_token_id, params, on_step=on_step)
    final = run_eval(s, sc.steps, "final") if cfg.task.n_eval else {}
    save_checkpoint(s, "final")
    plot_curves(s.run.read_metrics(), s.run.path / "curves.png")
    s.run.close()
    summary = {
        "base": base,
        "final": final,
        "n_eval": len(s.eval_rows),
        "steps": sc.steps,
        "n_demos": len(demos),
        "final_loss": sum(losses[-10:]) / min(10, len(losses)),
        "seconds": time.perf_counter() - t_start,
        "run_dir": str(s.run.path),
    }
    s.run.write_json("summary.json", summary)
    return summary
