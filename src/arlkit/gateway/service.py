"""One thread that owns generation while agents talk to the gateway: it gathers the requests that arrive
together, from every session, and runs them as one batch through the configured EpisodeRunner (arlkit's
engine, or the vLLM generator run turn by turn).

A request is one turn: its context ids (the session's segment so far) in, sampled ids with their logprobs
and entropies out, stopped by EOS or by the closing tool-call delimiter in its text, exactly as the built-in
ToolEnv path stops. Requests of equal context (the n samples of a GRPO group, or `n` > 1) share their prompt
prefill on the engine, as the built-in path does.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from arlkit.rollout.engine import EpisodeRunner, PartialTurn, RolloutParams, share_prompt_prefill
from arlkit.rollout.generator import Generation
from arlkit.rollout.spans import SpanScanner
from arlkit.trajectory import Trajectory


@dataclass(frozen=True)
class Sampling:
    """How one request samples (the OpenAI body's fields, resolved)."""

    max_new_tokens: int
    temperature: float
    top_p: float


@dataclass
class GenRequest:
    context: list[int]
    n: int
    sampling: Sampling
    future: Future = field(default_factory=Future)  # -> list[Generation], one per choice


class _Turn:
    """One choice of a request as the runners drive an Episode: one turn from a fixed context, then done."""

    def __init__(self, context: list[int], budget: int, spans: SpanScanner, stop_id: int):
        self.ids, self.budget, self.spans = context, budget, spans
        self.stop_token_ids = (stop_id,)
        self.done = False
        self.donor: _Turn | None = None
        self.donor_len = 0
        self.partial = PartialTurn()
        self.traj = (
            Trajectory()
        )  # the routed engine reads roles of the context; gateways refuse routed policies
        self.result = Generation([], [], [], "length")

    def context_ids(self) -> list[int]:
        return self.ids

    def turn_budget(self) -> int:
        return self.budget

    def finish(self, reason: str) -> None:  # no room left in the episode's context
        self.done, self.result = True, Generation([], [], [], "length")

    def advance(self, ids, logprobs=None, entropies=None, finish_reason: str = "stop") -> None:
        nan = [math.nan] * len(ids)
        lp = list(logprobs[: len(ids)]) if logprobs is not None else nan
        ent = list(entropies[: len(ids)]) if entropies is not None else nan
        self.done, self.result = True, Generation(list(ids), lp, ent, finish_reason)


class GenerationService:
    """Runs submitted requests in batches on a background thread. `gather_s`: the gap between two requests
    that still counts them into one batch (agents of one step send theirs at nearly the same time; waiting
    for the burst lets them share forwards)."""

    def __init__(
        self,
        runner: EpisodeRunner,
        spans: SpanScanner,
        eos_id: int,
        max_length: int,
        max_batch: int = 256,
        gather_s: float = 0.01,
        concurrent_batches: int = 1,
    ):
        self.runner, self.spans, self.eos_id = runner, spans, eos_id
        self.max_length, self.max_batch, self.gather_s = max_length, max_batch, gather_s
        # arlkit's engine runs one batch at a time (one model, one cache); a vLLM server batches continuously
        # itself, so batches go to it concurrently and a long one does not hold back requests arriving later
        self._pool = ThreadPoolExecutor(concurrent_batches) if concurrent_batches > 1 else None
        self._stats_lock = threading.Lock()
        self._queue: queue.Queue[GenRequest | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.busy_s = 0.0  # seconds batches spent generating (summed over concurrent ones)
        self.batches = 0
        self.requests = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="arlkit-gateway-gen", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def submit(self, context: Sequence[int], n: int, sampling: Sampling) -> Future:
        req = GenRequest(list(context), n, sampling)
        self._queue.put(req)
        return req.future

    def _gather(self, first: GenRequest) -> tuple[list[GenRequest], bool]:
        """The requests of one burst: keep taking while they arrive less than `gather_s` apart (agents of a
        step send theirs nearly together), for at most 20 gaps."""
        batch, stop = [first], False
        deadline = time.monotonic() + 20 * self.gather_s
        while sum(r.n for r in batch) < self.max_batch:
            wait = min(self.gather_s, deadline - time.monotonic())
            try:
                req = self._queue.get(timeout=max(wait, 0))
            except queue.Empty:
                break
            if req is None:
                stop = True
                break
            batch.append(req)
        return batch, stop

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = self._gather(first)
            by_sampling: dict[Sampling, list[GenRequest]] = {}
            for req in batch:
                by_sampling.setdefault(req.sampling, []).append(req)
            for sampling, reqs in by_sampling.items():
                if self._pool is None:
                    self._run(sampling, reqs)
                else:
                    self._pool.submit(self._run, sampling, reqs)
            if stop:
                if self._pool is not None:
                    self._pool.shutdown(wait=True)
                return

    def _run(self, sampling: Sampling, reqs: list[GenRequest]) -> None:
        t0 = time.perf_counter()
        try:
            turns = {id(r): [self._turn(r) for _ in range(r.n)] for r in reqs}
            flat = [t for ts in turns.values() for t in ts]
            share_prompt_prefill(flat)
            params = RolloutParams(
                max_turns=1,
                max_new_tokens=sampling.max_new_tokens,
                max_length=self.max_length,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
            )
            self.runner.run(flat, params)
        except BaseException as exc:  # the engine failed: every waiting request learns why
            for r in reqs:
                r.future.set_exception(exc)
            return
        finally:
            with self._stats_lock:
                self.busy_s += time.perf_counter() - t0
        with self._stats_lock:
            self.batches += 1
            self.requests += len(reqs)
        for r in reqs:
            r.future.set_result([t.result for t in turns[id(r)]])

    def _turn(self, req: GenRequest) -> _Turn:
        budget = min(req.sampling.max_new_tokens, self.max_length - len(req.context))
        return _Turn(req.context, budget, self.spans, self.eos_id)
