"""Data-parallel training over processes launched by `torchrun` or `accelerate launch` (DESIGN.md, "Scale").

accelerate's `PartialState` reads the launcher's environment (RANK, WORLD_SIZE, MASTER_ADDR, …), starts the
process group (NCCL on GPUs, gloo on CPU) and picks each rank's device; arlkit adds no cluster code of its own.
With WORLD_SIZE unset or 1 everything here is a no-op, so the single-process path is unchanged.

How a step is split (the choices, and why):
- Prompts, not rollouts, are sharded: rank r takes global prompt indices r, r+W, r+2W, … of the prompt stream,
  so a GRPO group (the n rollouts of one prompt) is always generated and normalised on one rank and group
  statistics need no communication. Dynamic sampling refills each rank from its own stride (no overlap, no
  collective inside `collect`).
- Gradients are summed across ranks once per optimiser step, after gradient accumulation, and each rank's loss
  is scaled by its share of the global mini-batch's normaliser (generated tokens for `token_mean`, rows for the
  sequence-level aggregations): with N_r tokens on rank r and N = Σ N_r, rank r's micro-batch weight is
  n_mb / N_r × N_r / N = n_mb / N, so the summed gradient is Σ_r Σ_mb ∇(Σ_tokens ℓ) / N, the single-process
  gradient of the global batch (not the mean of per-rank token means, which over-weights short-batch ranks).
  Torch's DDP wrapper would average per backward instead; it needs every rank to run the same number of
  backward passes over the same parameters, which token-budgeted micro-batches, DART's per-adapter
  `autograd.grad` and critic warm-up do not give. The all-reduce is the same traffic, not overlapped.
- Metrics are gathered and combined: means weighted by each rank's trajectory count, `_max`/`_min` by max/min,
  timings by max (the slowest rank bounds the step), throughputs (`perf/`) by sum.
- Evaluation is sharded (rank r evaluates held-out rows r, r+W, …); the trajectories are gathered, so the
  metrics are those of the whole held-out set. Only rank 0 writes the run folder and checkpoints.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as tdist

from arlkit.errors import ArlkitError
from arlkit.models.loading import resolve_device

T = TypeVar("T")
_MAX_KEYS = ("rollout/sampling_rounds", "actor/skipped_step")  # the same on every rank, or a worst case
_BUCKET = 1 << 25  # elements per gradient all-reduce (128 MiB in float32): bounds the flat buffer's memory


@dataclass(frozen=True)
class Dist:
    """This process's place in the job. `world_size == 1`: a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    fsdp: bool = False  # the trained weights are sharded (train/fsdp.py); else each rank holds all of them

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_world_size() -> int:
    """WORLD_SIZE as set by torchrun / accelerate launch (1 when not launched by them)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: str, strategy: str = "ddp") -> Dist:
    """The job's Dist; starts the process group through accelerate when launched with WORLD_SIZE > 1.
    `strategy` is `train.strategy`; an accelerate config with `distributed_type: FSDP` also selects
    arlkit's FSDP path (train/fsdp.py; its sharding rules are arlkit's, accelerate's fsdp_* options are not
    read).

    Raises:
        ArlkitError: an accelerate config that asks for DeepSpeed.
    """
    if launched_world_size() <= 1:
        return Dist(device=resolve_device(device))
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    state = PartialState(cpu=cpu)
    if state.distributed_type == DistributedType.DEEPSPEED:
        raise ArlkitError(
            "accelerate config: distributed_type DEEPSPEED is not supported by `arlkit train`; use "
            "configs/accelerate/ddp_*.yaml or fsdp_1node.yaml (see docs/scale.md)"
        )
    # `accelerate launch` with an FSDP config sets ACCELERATE_USE_FSDP; PartialState reports FSDP only on GPUs
    from_accelerate = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    fsdp = strategy == "fsdp" or from_accelerate or state.distributed_type == DistributedType.FSDP
    return Dist(rank=state.process_index, world_size=state.num_processes, device=state.device, fsdp=fsdp)


@contextlib.contextmanager
def main_first(dist: Dist) -> Iterator[None]:
    """Rank 0 runs the block first (building the tiny base, a corpus index: shared caches), then the others."""
    if dist.enabled and not dist.is_main:
        tdist.barrier()
    yield
    if dist.enabled and dist.is_main:
        tdist.barrier()


def shutdown(dist: Dist) -> None:
    """End the process group once every rank is done (the gloo and FSDP mesh groups' threads are joined, not
    left to abort the process at interpreter exit)."""
    if dist.enabled and tdist.is_initialized():
        tdist.barrier()
        tdist.destroy_process_group()


class QuietRunDir:
    """What ranks other than 0 hold instead of a RunDir: the same path and methods, nothing written (any
    writer RunDir gains later is silent here too)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def read_metrics(self) -> list[dict[str, Any]]:
        return []

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


def rollout_seed(seed: int, dist: Dist) -> int:
    """Each rank samples with its own deterministic seed (rank 0 keeps the configured one)."""
    return seed + 1_000_003 * dist.rank


def prompt_index(local: int, dist: Dist) -> int:
    """The global index of this rank's `local`-th prompt: ranks take interleaved strides of the stream."""
    return local * dist.world_size + dist.rank


def shard(items: Sequence[T], dist: Dist) -> list[T]:
    """This rank's items r, r+W, r+2W, … (whole items: rows, prompts)."""
    return list(items[dist.rank :: dist.world_size])


def gather(items: list[T], dist: Dist) -> list[T]:
    """Every rank's list, concatenated in rank order, on every rank (pickled: small objects only)."""
    if not dist.enabled:
        return items
    out: list[Any] = [None] * dist.world_size
    tdist.all_gather_object(out, items)
    return [x for part in out for x in part]


def unshard(parts: list[T], dist: Dist) -> list[T]:
    """Inverse of `shard` after `gather`: the items back in their original order."""
    if not dist.enabled:
        return parts
    sizes = [len(range(r, len(parts), dist.world_size)) for r in range(dist.world_size)]
    out: list[Any] = [None] * len(parts)
    start = 0
    for r, n in enumerate(sizes):
        out[r :: dist.world_size] = parts[start : start + n]
        start += n
    return out


def global_sum(value: float, dist: Dist) -> float:
    return _reduce_scalar(value, dist, tdist.ReduceOp.SUM)


def global_max(value: float, dist: Dist) -> float:
    return _reduce_scalar(value, dist, tdist.ReduceOp.MAX)


def _reduce_scalar(value: float, dist: Dist, op: tdist.ReduceOp) -> float:
    if not dist.enabled:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device(dist))
    tdist.all_reduce(t, op=op)
    return float(t.item())


def broadcast_parameters(modules: Iterable[torch.nn.Module | None], dist: Dist) -> None:
    """Make every rank start from rank 0's weights (a randomly initialised value head, say)."""
    if not dist.enabled:
        return
    with torch.no_grad():
        for m in modules:
            for t in [] if m is None else [*m.parameters(), *m.buffers()]:
                tdist.broadcast(t.data, src=0)


class GradSync:
    """The update's hooks for data parallelism: the loss scale of a rank's share of a global mini-batch and
    the gradient sum across ranks (module docstring). One per run; every call is a collective."""

    def __init__(self, dist: Dist):
        self.dist = dist

    def share(self, local: float) -> float:
        """local / Σ_ranks local: the factor that turns a rank-local normaliser into the global one."""
        total = global_sum(local, self.dist)
        return local / total if total > 0 else 0.0

    def max_count(self, local: int) -> int:
        """The largest `local` over ranks (micro-batches per mini-batch, which FSDP needs equal)."""
        return int(global_max(local, self.dist))

    def all_reduce(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Sum gradients over ranks, in place. A parameter without a gradient on every rank keeps None
        (AdamW then skips it, as in one process); one with a gradient on some rank gets zeros elsewhere.
        Under FSDP a no-op: its backward hooks already reduce-scattered the gradients into each rank's shard."""
        if self.dist.fsdp:
            return
        dev = _comm_device(self.dist)
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=dev)
        tdist.all_reduce(has)
        live = [p for p, h in zip(params, has.tolist(), strict=True) if h > 0]
        for p in live:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for bucket in _buckets(live):
            flat = torch.cat([p.grad.reshape(-1) for p in bucket])  # (Σ numel,)
            tdist.all_reduce(flat)
            offset = 0
            for p in bucket:
                p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
                offset += p.numel()


def _buckets(params: list[torch.nn.Parameter]) -> list[list[torch.nn.Parameter]]:
    """Consecutive parameters of one dtype and device, ~_BUCKET elements per bucket (same on every rank)."""
    out: list[list[torch.nn.Parameter]] = []
    size = 0
    for p in params:
        if (
            not out
            or size + p.numel() > _BUCKET
            or (p.grad.dtype, p.grad.device)
            != (
                out[-1][0].grad.dtype,
                out[-1][0].grad.device,
            )
        ):
            out.append([])
            size = 0
        out[-1].append(p)
        size += p.numel()
    return out


def _comm_device(dist: Dist) -> torch.device:
    """NCCL moves CUDA tensors only; gloo CPU ones."""
    return dist.device if tdist.get_backend() == "nccl" else torch.device("cpu")


def reduce_metrics(metrics: dict[str, float], weight: float, dist: Dist) -> dict[str, float]:
    """One step's metrics over all ranks (rules in the module docstring); `weight`: this rank's trajectories.
    A key some rank lacks is combined over the ranks that have it."""
    if not dist.enabled:
        return metrics
    parts: list[Any] = [None] * dist.world_size
    tdist.all_gather_object(parts, (metrics, float(weight)))
    keys = list(dict.fromkeys(k for m, _ in parts for k in m))
    out: dict[str, float] = {}
    for k in keys:
        vals = [(float(m[k]), w) for m, w in parts if k in m]
        out[k] = _combine(k, vals)
    return out


def _combine(key: str, vals: list[tuple[float, float]]) -> float:
    xs = [v for v, _ in vals]
    if key.startswith("timing_s/") or key.endswith("_max") or key in _MAX_KEYS:
        return max(xs)
    if key.endswith("_min"):
        return min(xs)
    if key.startswith("perf/") or key == "rollout/groups_dropped":
        return sum(xs)
    total = sum(w for _, w in vals)
    if total <= 0:
        return sum(xs) / len(xs)
    return sum(v * w for v, w in vals) / total


def check_divisible(prompts_per_step: int, dist: Dist) -> None:
    """Every rank takes the same number of whole groups per step."""
    if prompts_per_step % dist.world_size:
        raise ArlkitError(
            f"rollout.prompts_per_step={prompts_per_step} must be a multiple of the number of processes "
            f"({dist.world_size}): each rank rolls out whole groups"
        )
