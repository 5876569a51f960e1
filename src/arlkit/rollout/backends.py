"""Building the configured rollout backend: `engine` (the continuous-batching KV-cache engine, the default) or
`hf` (HFGenerator, re-prefilling each turn: the simple reference)."""

from __future__ import annotations

import torch

from arlkit.errors import ArlkitError
from arlkit.models.routing import is_routed
from arlkit.rollout.continuous import ContinuousEngine
from arlkit.rollout.engine import EpisodeRunner, TurnSyncRunner
from arlkit.rollout.generator import HFGenerator

BACKENDS = ("engine", "hf")


def make_runner(
    backend: str,
    model: torch.nn.Module,
    pad_id: int,
    *,
    max_batch: int = 256,
    seed: int = 0,
    prefill_tokens: int = 8192,
    cuda_graphs: bool = False,
    routing: dict | None = None,
) -> EpisodeRunner:
    """The EpisodeRunner for `backend`; max_batch is the engine's slot count or the generator's batch size.
    `routing`: a role-routed policy's settings (models/routing.py); only the engine routes while generating.

    Raises:
        ArlkitError: unknown backend, CUDA graphs asked for off a GPU or with the `hf` backend, or a routed
            policy with the `hf` backend.
    """
    if backend not in BACKENDS:
        raise ArlkitError(f"rollout.backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if cuda_graphs and (backend != "engine" or next(model.parameters()).device.type != "cuda"):
        raise ArlkitError("rollout.cuda_graphs needs rollout.backend=engine and the model on a CUDA device")
    if backend == "hf":
        if is_routed(model):
            raise ArlkitError("a routed policy (model.routing) needs rollout.backend=engine to generate")
        return TurnSyncRunner(HFGenerator(model, pad_id, max_batch, seed))
    return ContinuousEngine(
        model,
        pad_id,
        max_slots=max_batch,
        seed=seed,
        prefill_tokens=prefill_tokens,
        decode="cuda_graph" if cuda_graphs else "dynamic",
        answer_adapter=(routing or {}).get("answer_adapter", "reasoning"),
    )
