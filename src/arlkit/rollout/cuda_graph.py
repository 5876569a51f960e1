"""The engine's decode step at fixed shapes, so that a GPU can replay it as one captured CUDA graph.

Every slot of the pool takes part (idle slots write to the scratch position) and every row reads all L
positions, so the shapes never change: the step is captured once per pool and replayed with new inputs
copied into static buffers. Per-step launch overhead is what dominates decoding a small model on a GPU;
a replayed graph pays it once. Prefill keeps dynamic shapes and runs eagerly.

Not run on a GPU in this repository's CI: `capture=False` runs the same static step eagerly (the CPU tests do
that); the capture itself follows the PyTorch recipe (warm-up on a side stream, then `torch.cuda.graph`).
"""

from __future__ import annotations

import torch

from arlkit.models.cache_api import with_cache
from arlkit.models.routing import is_routed, routing
from arlkit.rollout.kv_cache import Layout, SlotCache, window_mask


class StaticDecoder:
    """One decode forward over all S slots × L positions of `cache`; returns logits (S, V)."""

    def __init__(self, model: torch.nn.Module, cache: SlotCache, capture: bool):
        self.model, self.cache, self.capture = model, cache, capture
        S, dev = cache.n_slots, cache.keys[0].device
        self.dtype = cache.keys[0].dtype
        self.ids = torch.zeros((S, 1), dtype=torch.long, device=dev)
        self.pos = torch.zeros((S, 1), dtype=torch.long, device=dev)
        self.write = torch.zeros((S,), dtype=torch.long, device=dev)
        self.mask = torch.zeros((S, 1, 1, cache.max_len), dtype=self.dtype, device=dev)
        self.routes = torch.zeros((S, 1), dtype=torch.long, device=dev)  # read by a routed policy only
        self.routed = is_routed(model)
        slots = torch.arange(S, device=dev)
        self.layout = Layout(slots, slots, self.write, None, cache.max_len, rows_are_prefix=True)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None

    def _forward(self) -> torch.Tensor:
        self.cache.bind(self.layout)
        with routing(self.model, self.routes if self.routed else None):
            out = self.model(
                input_ids=self.ids,
                position_ids=self.pos,
                attention_mask=self.mask,
                **with_cache(self.cache),
                use_cache=True,
                logits_to_keep=1,
            )
        return out.logits[:, -1]

    def _capture(self) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up allocates workspaces outside the graph
            for _ in range(2):
                self._forward()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._forward()

    @torch.no_grad()
    def __call__(
        self, ids: list[int], pos: list[int], write: list[int], routes: torch.Tensor | None = None
    ) -> torch.Tensor:
        """ids, pos, write: one entry per slot (input id, its position, where its key goes); routes (S, 1)."""
        dev = self.ids.device
        self.ids.copy_(torch.tensor(ids, device=dev)[:, None])
        self.pos.copy_(torch.tensor(pos, device=dev)[:, None])
        self.write.copy_(torch.tensor(write, device=dev))
        self.mask.copy_(window_mask(self.pos, self.cache.max_len, self.dtype))
        if routes is not None:
            self.routes.copy_(routes)
        if not self.capture:
            return self._forward()
        if self.graph is None:
            self._capture()
        self.graph.replay()
        return self.logits
