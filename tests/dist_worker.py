"""One RL update on given trajectories, in as many processes as the launcher starts (tests/test_distributed.py).

    torchrun --nproc_per_node 2 tests/dist_worker.py JOB.pkl OUT_DIR

JOB.pkl holds {"variants": {name: [overrides]}, "trajectories": [...]}. Each rank replaces `collect` by its
share of the trajectories (the groups whose prompt index `train/distributed.py` gives it), runs the real
`train_step`, and rank 0 writes OUT_DIR/<name>.pt with the parameters and the reduced metrics. Also checks
the metric reduction on a hand-made case.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import torch
from rich.console import Console

import arlkit.train.loop as loop
from arlkit.config import load_config
from arlkit.train.distributed import Dist, reduce_metrics, shutdown
from arlkit.train.setup import setup


def run_variant(overrides: list[str], trajs: list) -> tuple[dict, dict]:
    """Overrides ending in "#rank0_only" give ranks other than 0 no trajectories (all filtered out, say)."""
    cfg = load_config(None, [o for o in overrides if not o.startswith("#")])
    s = setup(cfg, Console(quiet=True), run_mode=None)  # variants run one after another: no run folder
    mine = [t for t in trajs if t.group_id % s.dist.world_size == s.dist.rank]
    if overrides[-1] == "#rank0_only" and s.dist.rank:
        mine = []
    loop.collect = lambda _s: loop.Collected(mine, 1, 0)
    start = {k: v.detach().clone() for k, v in s.policy.model.named_parameters()}
    metrics = loop.train_step(s, 1)
    # the full copy rollouts use (under FSDP refreshed from the sharded one after the update)
    params = {k: v.detach().clone() for k, v in s.policy.model.named_parameters()}
    share = _local_share(s.policy.trained)
    return params, metrics | {
        "_rank_trajectories": float(len(mine)),
        "_world": float(s.dist.world_size),
        "_trained_share": share,
        "_moved": max(float((params[k] - start[k]).abs().max()) for k in params),
    }


def _local_share(model: torch.nn.Module) -> float:
    """The share of the trained module's elements this rank holds (1.0 unsharded, ~1/W under FSDP)."""
    local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in model.parameters())
    return local / sum(p.numel() for p in model.parameters())


def check_reduction(rank: int, world: int) -> dict[str, float]:
    """Rank r reports reward r and weight r + 1; the reduced values are worked out in the test."""
    dist = Dist(rank=rank, world_size=world)
    mine = {"rollout/reward": float(rank), "timing_s/update": float(rank), "perf/gen_tokens_per_s": 10.0}
    mine |= {"rollout/advantage_max": float(rank), "rollout/advantage_min": float(rank)}
    if rank == 0:
        mine["tao/only_rank0"] = 7.0
    return reduce_metrics(mine, rank + 1, dist)


def main(job_path: str, out_dir: str) -> None:
    job = pickle.loads(Path(job_path).read_bytes())
    results = {name: run_variant(ov, job["trajectories"]) for name, ov in job["variants"].items()}
    import torch.distributed as tdist

    world = tdist.get_world_size() if tdist.is_initialized() else 1
    rank = tdist.get_rank() if tdist.is_initialized() else 0
    reduced = check_reduction(rank, world) if world > 1 else {}
    if rank == 0:
        for name, (params, metrics) in results.items():
            torch.save(
                {"params": params, "metrics": metrics, "reduced": reduced}, Path(out_dir) / f"{name}.pt"
            )
    shutdown(Dist(rank=rank, world_size=world))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
