"""Guards that keep a long run alive, or stop it cleanly: non-finite updates and crashing environments.

- An optimiser step whose loss or gradient norm is not finite is skipped (train/update.py); a step with a
  skipped update is a bad step, and `train.max_bad_steps` bad steps in a row stop the run with an ArlkitError
  after checkpointing: the skipped updates never touched the weights, so they are the last good ones.
- An optimiser step with a finite gradient can still leave non-finite weights (a huge algo.lr overflows
  Adam's update); no later step can repair them, so the run stops at once, naming the step and a tensor,
  and the newest checkpoint holds the weights from before it.
- An episode whose environment raised (a bug in env code, not a failed tool call, which is an observation)
  ends with `metadata["env_error"]` (rollout/engine.py) and is left out of the update and of its group's
  statistics, so one bad row never kills a run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from arlkit.errors import ArlkitError
from arlkit.train.distributed import Dist, global_sum
from arlkit.trajectory import Trajectory

SKIP_KEYS = ("actor/skipped_updates", "critic/skipped_updates")  # counted by train/update.py


@dataclass
class TrainState:
    """The loop's own counters, saved in every checkpoint. `step`: the last finished step (0 before the first)."""

    step: int = 0
    bad_steps: int = 0  # consecutive steps with a skipped (non-finite) update
    skipped_updates: int = 0  # optimiser steps skipped over the whole run


def observe_step(state: TrainState, metrics: dict[str, float]) -> dict[str, float]:
    """Update the guard counters of `state` with one step's metrics; returns the `guard/` metrics."""
    skipped = int(sum(metrics.get(k, 0.0) for k in SKIP_KEYS))
    state.bad_steps = state.bad_steps + 1 if skipped else 0
    state.skipped_updates += skipped
    return {
        "guard/skipped_updates": float(skipped),
        "guard/skipped_updates_total": float(state.skipped_updates),
        "guard/consecutive_bad_steps": float(state.bad_steps),
    }


def diverged(state: TrainState, max_bad_steps: int) -> bool:
    return state.bad_steps >= max_bad_steps


def divergence_error(state: TrainState, max_bad_steps: int, checkpoint: Path) -> ArlkitError:
    return ArlkitError(
        f"training stopped at step {state.step}: {state.bad_steps} steps in a row had a non-finite loss or "
        f"gradient (train.max_bad_steps={max_bad_steps}); their updates were skipped, so the last good "
        f"weights are in {checkpoint}. Lower algo.lr (or algo.grad_clip), check the rewards, then "
        "continue with --resume"
    )


def nonfinite_parameters(modules: Sequence[torch.nn.Module | None]) -> list[str]:
    """Names of the trainable parameters (this rank's shards under FSDP) that hold a NaN or an infinity; one
    device sync for all of them."""
    named = [(n, p) for m in modules if m is not None for n, p in m.named_parameters() if p.requires_grad]
    if not named:
        return []
    local = [p.to_local() if hasattr(p, "to_local") else p for _, p in named]  # FSDP2: DTensor shards
    finite = torch.stack([torch.isfinite(p.detach()).all() for p in local]).tolist()
    return [n for (n, _), ok in zip(named, finite, strict=True) if not ok]


def check_finite_weights(
    modules: Sequence[torch.nn.Module | None], step: int, lr: float, checkpoints: Path, dist: Dist
) -> None:
    """Stop the run when step `step` left a trainable weight non-finite (every rank takes part).

    Raises:
        ArlkitError: naming the step, a tensor, algo.lr and the checkpoint to resume from.
    """
    bad = nonfinite_parameters(modules)
    if not global_sum(float(len(bad)), dist):
        return
    from arlkit.train.checkpoint import latest_checkpoint  # here: checkpoint.py imports this module

    last = latest_checkpoint(checkpoints)
    where = f"{bad[0]} and {len(bad) - 1} more tensors" if bad else "on another rank"
    then = (
        f"the newest checkpoint, {last}, holds the weights of an earlier step: continue with --resume"
        if last
        else "no checkpoint was written before it (train.save_every sets how often)"
    )
    raise ArlkitError(
        f"training stopped at step {step}: its optimiser step left non-finite weights ({where}), which no "
        f"later step can repair. Lower algo.lr ({lr:g}) or algo.grad_clip; {then}"
    )


def without_env_errors(trajs: Sequence[Trajectory]) -> list[Trajectory]:
    """The trajectories whose environment did not raise (the ones an update may learn from)."""
    return [t for t in trajs if "env_error" not in t.metadata]


def env_error_metrics(trajs: Sequence[Trajectory]) -> dict[str, float]:
    """`env/errors`: episodes whose env raised this step; `env/error_rate`: their share."""
    n = sum("env_error" in t.metadata for t in trajs)
    return {"env/errors": float(n), "env/error_rate": n / len(trajs) if trajs else 0.0}
