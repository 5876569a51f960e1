"""A rank with nothing to train this step: its groups were all filtered out while other ranks' were not.

It sits above setup.py and update.py (it takes the Setup and runs the update with no rows), so that
distributed.py, which both of them import, imports neither back.
"""

from __future__ import annotations

import torch

from arlkit.train.distributed import reduce_metrics
from arlkit.train.setup import Setup
from arlkit.train.update import UpdateBatch, update
from arlkit.trajectory import Batch

__all__ = ["empty_update_batch", "idle_step"]


def empty_update_batch() -> UpdateBatch:
    """An UpdateBatch of no rows, (0, 1) tensors."""
    f, i = torch.zeros((0, 1)), torch.zeros((0, 1), dtype=torch.long)
    return UpdateBatch(batch=Batch(i, i, i, i, f, f, f, torch.zeros(0, dtype=torch.long)), advantages=f)


def idle_step(s: Setup, train_actor: bool, behaviour: dict[str, float], weight: float) -> dict[str, float]:
    """A rank whose groups were all filtered out while other ranks' were not: it still takes part in every
    collective of the update (with an empty batch: a zero gradient) and in the metric reduction."""
    cfg = s.cfg
    update(
        s.policy,
        s.opts,
        empty_update_batch(),
        cfg.algo,
        cfg.critic,
        cfg.rollout.temperature,
        s.rng,
        cfg.algo.norm_constant or cfg.token_budget,
        train_actor,
        s.sync,
    )
    return reduce_metrics(behaviour, weight, s.dist)
