"""Evaluation on held-out questions: EM, F1, tool calls per episode, turns, format-error rate."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from arlkit.rollout.engine import EpisodeRunner, RolloutParams, rollout
from arlkit.rollout.generator import Generator
from arlkit.rollout.metrics import episode_metrics
from arlkit.train.distributed import Dist, gather, unshard
from arlkit.trajectory import Trajectory


@dataclass(frozen=True)
class EvalResult:
    metrics: dict[str, float]
    trajectories: list[Trajectory]


def evaluate(
    generator: Generator | EpisodeRunner,
    tokenizer: Any,
    make_env: Callable[[], Any],
    rows: Sequence[dict],
    params: RolloutParams,
) -> EvalResult:
    """One episode per row under `params` (its temperature included); returns metrics and trajectories."""
    trajs = rollout(generator, tokenizer, make_env, rows, list(range(len(rows))), params)
    return eval_result(trajs)


def eval_result(trajs: list[Trajectory]) -> EvalResult:
    """The metrics of evaluated episodes (also of the union of several ranks' shards)."""
    metrics = episode_metrics(trajs)
    metrics["n"] = float(len(trajs))
    return EvalResult(metrics=metrics, trajectories=trajs)


def gather_eval(res: EvalResult, dist: Dist) -> EvalResult:
    """The evaluation of the whole held-out set from each rank's `shard` of it."""
    if not dist.enabled:
        return res
    return eval_result(unshard(gather(res.trajectories, dist), dist))
