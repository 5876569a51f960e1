"""Asynchronous rollouts with bounded staleness (issue 22, docs/async.md): producer threads sample whole
steps' groups on rollout copies of the weights while the trainer updates; the trainer takes them, in order,
from a bounded buffer and publishes its weights back after every step.

- Versions and lags: rollout/staleness.py. Before sampling the batch of step k a producer waits for
  version ≥ k − 1 − max_staleness, so it never samples what would have to be thrown away, and the batches
  sampled but not yet trained stay at most max_staleness + 1 (the back-pressure); a batch older than the
  bound is still checked at take time, dropped and counted, never trained.
- Publication at version boundaries: `publish` leaves a snapshot of the weights; a producer copies it into
  its model only between batches, so no batch mixes two versions (`metadata["policy_version"]`).
- On the vLLM backend the producers share the one server: `publish` writes the weights into it under the
  server's VersionGate (rollout/version_gate.py), after the batches in flight end; with
  `rollout.partial_rollouts` only the turns in flight end first, the episodes go on with the new weights,
  each turn's version is in `metadata["turn_versions"]` and the episode's `policy_version` is its oldest.
- Several producers (`rollout.producers`) sample consecutive batches at once, each on its own copy, so one
  batch's tool waits overlap another's.
- A producer that raises (an env factory, a bug) is restarted and the batch it lost is regenerated from the
  same prompts; `ArlkitError` (a configuration error) stops the run as it does synchronously.
- Determinism: batch j's prompts and sampling seed follow from the trainer's cursor, so what is dropped at a
  checkpoint regenerates with the same prompts and seeds after --resume; which version samples it depends on
  timing (within the bound).
"""

from __future__ import annotations

import copy
import heapq
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from arlkit.config import Config
from arlkit.errors import ArlkitError
from arlkit.models.precision import SamplerCopy, merged_state_dict
from arlkit.rollout.backends import make_runner
from arlkit.rollout.engine import EpisodeRunner, RolloutParams, TurnSyncRunner, rollout_episodes
from arlkit.rollout.staleness import fresh, lag, oldest_version, staleness_metrics
from arlkit.rollout.vllm_backend import VLLMSampler
from arlkit.trajectory import Trajectory

MAX_RESTARTS = 3  # producer failures in a row (no batch in between) before the run stops
POLL_S = 0.1  # how often a waiting thread checks for a stop or a dead producer


@dataclass(frozen=True)
class Produced:
    """One step's groups: sampled by one version of the weights, or with partial rollouts by several (each
    episode's `metadata["turn_versions"]`)."""

    index: int  # the batch's number since the producer started: its prompts follow from it
    version: int  # the oldest version that sampled any of its tokens
    trajectories: list[Trajectory]
    gen_s: float  # the producer's seconds on this batch (generation and tool calls)


@dataclass(frozen=True)
class Taken:
    trajectories: list[Trajectory]
    cursor: int  # the trainer's data position after this batch (what a checkpoint saves)
    metrics: dict[str, float]


def check_supported(cfg: Config, world_size: int) -> None:
    """Raises ArlkitError for the settings asynchronous rollouts do not support yet (docs/async.md)."""
    unsupported = {
        "no rollout.agent (the gateway serves the trainer's runner)": cfg.rollout.agent is not None,
        "branching.mode none (branches resume the step's own episodes)": cfg.branching.mode != "none",
        "algo.dynamic_sampling false (refill rounds sample from the current policy)": cfg.algo.dynamic_sampling,
        "one process (launch without torchrun)": world_size > 1,
        "a policy without model.routing (adapters route inside the trainer's engine)": (
            cfg.model.routing is not None
        ),
    }
    if cfg.rollout.partial_rollouts and not cfg.rollout.max_staleness:
        raise ArlkitError(
            "rollout.partial_rollouts needs rollout.max_staleness ≥ 1 (the synchronous loop syncs between steps, "
            "with no episode in flight)"
        )
    if cfg.rollout.partial_rollouts and cfg.rollout.backend != "vllm":
        raise ArlkitError(
            "rollout.partial_rollouts needs rollout.backend vllm (the engine's producers each hold a private "
            "copy of the weights, swapped between batches)"
        )
    for need, bad in unsupported.items():
        if bad:
            raise ArlkitError(f"rollout.max_staleness {cfg.rollout.max_staleness} needs {need}")


@dataclass
class _Producer:
    """One producer thread with its own copy of the weights and its own runner (its engine's KV caches)."""

    copy: SamplerCopy | None  # None: the producers share a server (vLLM) that the trainer writes into
    runner: EpisodeRunner
    version: int  # the version its copy holds
    batch: int | None = None  # the batch it is sampling: a restart samples it again
    error: BaseException | None = None
    thread: threading.Thread | None = None


class AsyncRollouts:
    """The producer threads, their rollout copies and the buffer. `sample(runner, cursor)` runs the episodes of
    the batch whose first prompt is at `cursor` (the loop's prompt stream) and returns their Trajectories.
    Several producers (`producers`) sample consecutive batches at once, so one batch's tool waits overlap
    another's; each holds its own copy of the weights, and batches reach the trainer in order."""

    def __init__(
        self,
        policy_model: torch.nn.Module,
        make_runner_on: Callable[[torch.nn.Module], EpisodeRunner],
        sample: Callable[[EpisodeRunner, int], list[Trajectory]],
        *,
        cursor: int,
        step: int,
        per_step: int,
        max_staleness: int,
        producers: int = 1,
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
        server: VLLMSampler | None = None,
        partial: bool = False,
    ):
        self.sample, self.cursor0, self.step0 = sample, cursor, step  # step0: the step of batch 0
        self.per_step, self.max_staleness, self.seed = per_step, max_staleness, seed
        self.server, self.partial = server, partial
        self.cond = threading.Condition()  # guards everything below that the threads share
        self.published = step - 1  # the weights at start are those after step `step - 1`
        self.snapshot: tuple[int, dict[str, torch.Tensor]] | None = None  # never mutated once published
        self.done: dict[int, Produced] = {}  # finished batches by index, not yet taken (the buffer)
        self.redo: list[int] = []  # batches a failed producer lost
        self.next_index = self.next_take = self.restarts = self.failures = 0
        self.stop = threading.Event()
        self.producers = []
        if server is not None:  # one server for all: `publish` writes into it between reads of its gate
            server.gate.version = step - 1
        for _ in range(producers):  # each its own copy of the published weights (the trainer never writes it)
            copy_ = SamplerCopy(policy_model, dtype) if server is None else None
            model = copy_.model if copy_ is not None else None
            self.producers.append(_Producer(copy_, make_runner_on(model), step - 1))
        for p in self.producers:
            self._start(p)

    def _start(self, p: _Producer) -> None:
        p.error, p.thread = (
            None,
            threading.Thread(target=self._run, args=(p,), name="arlkit-producer", daemon=True),
        )
        p.thread.start()

    def _run(self, p: _Producer) -> None:
        try:
            self._produce(p)
        except BaseException as e:  # the trainer decides: restart, or stop the run
            p.error = e

    def _produce(self, p: _Producer) -> None:
        while not self.stop.is_set():
            with self.cond:
                j = p.batch = heapq.heappop(self.redo) if self.redo else self._claim()
            if not self._wait_for(oldest_version(self.step0 + j, self.max_staleness)):
                return
            self._apply(p)
            _seed(p.runner, self.seed + self.cursor0 + j * self.per_step)
            t0 = time.perf_counter()
            with self._hold_weights(p):
                trajs = self.sample(p.runner, self.cursor0 + j * self.per_step)
            for t in trajs:  # partial rollouts: an episode is as old as its oldest turn
                t.metadata["policy_version"] = min(t.metadata.get("turn_versions") or [p.version])
            version = min((t.metadata["policy_version"] for t in trajs), default=p.version)
            with self.cond:
                self.done[j] = Produced(j, version, trajs, time.perf_counter() - t0)
                p.batch, self.failures = None, 0
                self.cond.notify_all()

    @contextmanager
    def _hold_weights(self, p: _Producer) -> Iterator[None]:
        """While a batch samples. On a shared server without partial rollouts: a read of its gate for the
        whole batch, so a sync waits until the batch ends; with partial rollouts the generator reads the gate
        per turn. A private copy changes only between batches (`_apply`), so it needs nothing."""
        if self.server is None:
            yield
        elif self.partial:
            p.version = self.server.gate.version
            yield
        else:
            with self.server.gate.read() as version:
                p.version = version
                yield

    def _claim(self) -> int:
        self.next_index += 1
        return self.next_index - 1

    def _wait_for(self, version: int) -> bool:
        """Block until `version` is published (False: stopped meanwhile). This gate is the back-pressure: the
        batches finished and not yet taken never exceed max_staleness + 1."""
        with self.cond:
            while self.published < version and not self.stop.is_set():
                self.cond.wait(POLL_S)
        return not self.stop.is_set()

    @torch.no_grad()
    def _apply(self, p: _Producer) -> None:
        """Copy the newest published weights into `p` (between its batches only)."""
        with self.cond:
            snapshot = self.snapshot
        if snapshot is not None and snapshot[0] > p.version:
            target = p.copy.model.state_dict()
            for key, value in snapshot[1].items():
                target[key].copy_(value)
            p.version = snapshot[0]

    def publish(self, policy_model: torch.nn.Module, version: int) -> dict[str, float]:
        """The trainer's weights after step `version`, for the producers' next batches (a snapshot: the trainer
        goes on updating its own). Call after every step, an update skipped or not: the producers wait on it.
        A shared server is written now, once the generation that holds its gate ends. Returns the seconds it
        took and, on a server, those it waited for generation (the trainer idles then too)."""
        t0 = time.perf_counter()
        if self.server is not None:
            self.server.refresh(policy_model, version)
            with self.cond:
                self.published = version
                self.cond.notify_all()
            waited = self.server.last_wait_s
        else:
            state = {k: v.detach().clone() for k, v in merged_state_dict(policy_model).items()}
            with self.cond:
                self.snapshot, self.published = (version, state), version
                self.cond.notify_all()
            waited = 0.0
        return {"timing_s/publish": time.perf_counter() - t0, "async/publish_wait_s": waited}

    def take(self, step: int) -> Taken:
        """The next batch `step` may train (older batches dropped and counted), and the step's async metrics."""
        t0, dropped, restarts0 = time.perf_counter(), 0, self.restarts
        while True:
            item = self._next()
            if fresh(step, [item.version], self.max_staleness)[0]:
                break
            dropped += self.per_step
        group_version: dict[int, int] = defaultdict(lambda: step)  # a group is as old as its oldest episode
        for t in item.trajectories:
            group_version[t.group_id] = min(group_version[t.group_id], t.metadata["policy_version"])
        metrics = staleness_metrics([lag(step, v) for v in group_version.values()], self.max_staleness)
        metrics |= {
            "async/dropped_stale": float(dropped),
            "async/trainer_idle_s": time.perf_counter() - t0,
            "async/buffer_groups": float(len(self.done) * self.per_step),
            "async/producer_restarts": float(self.restarts - restarts0),
            "async/policy_version": float(item.version),
            "async/gen_s": item.gen_s,
            "async/gen_tokens_per_s": sum(t.n_generated for t in item.trajectories) / max(item.gen_s, 1e-9),
        }
        if self.partial:  # episodes whose turns came from more than one version (in flight across a sync)
            spans = [len(set(t.metadata.get("turn_versions") or ())) > 1 for t in item.trajectories]
            metrics["async/episodes_across_syncs"] = float(sum(spans))
        return Taken(item.trajectories, self.cursor0 + (item.index + 1) * self.per_step, metrics)

    def _next(self) -> Produced:
        """The next batch in order, restarting producers that died meanwhile."""
        with self.cond:
            while self.next_take not in self.done:
                for p in self.producers:
                    if p.thread is not None and not p.thread.is_alive():
                        self._restart(p)
                self.cond.wait(POLL_S)
            self.next_take += 1
            return self.done.pop(self.next_take - 1)

    def _restart(self, p: _Producer) -> None:
        """Start `p` again; the batch it lost goes back to be sampled first. Raises ArlkitError for a
        configuration error, or after MAX_RESTARTS failures in a row (no batch finished in between)."""
        if isinstance(p.error, ArlkitError):
            raise p.error
        self.failures += 1
        if self.failures > MAX_RESTARTS:
            raise ArlkitError(
                f"the rollout producer failed {MAX_RESTARTS + 1} times in a row; last: {p.error!r}"
            )
        if p.batch is not None:
            heapq.heappush(self.redo, p.batch)
            p.batch = None
        self.restarts += 1
        self._start(p)

    def close(self) -> None:
        self.stop.set()
        with self.cond:
            self.cond.notify_all()
        for p in self.producers:
            if p.thread is not None:
                p.thread.join(timeout=30)


def _seed(runner: Any, seed: int) -> None:
    """Seed the runner's sampling generator (the engine's, or its Generator's) for one batch."""
    for owner in (runner, getattr(runner, "generator", None)):
        rng = getattr(owner, "rng", None)
        if isinstance(rng, torch.Generator):
            rng.manual_seed(seed)
            return


def start_rollouts(s: Any, step: int) -> AsyncRollouts:
    """The producer for a run set up as `s` (train/setup.py's Setup) whose next step is `step`, starting at
    the trainer's data position `s.cursor`.

    Raises:
        ArlkitError: a setting asynchronous rollouts do not support (`check_supported`).
    """
    cfg = s.cfg
    check_supported(cfg, s.dist.world_size)
    r = cfg.rollout
    tokenizer = copy.deepcopy(s.policy.tokenizer)  # a fast tokenizer is not safe to share between threads
    params = RolloutParams(cfg.task.max_turns, r.max_new_tokens, r.max_length, r.temperature, r.top_p)

    server = s.sampler if r.backend == "vllm" else None
    if server is not None and r.partial_rollouts:
        server.generator.gate = server.gate  # every generation call on the server reads the gate, eval's too

    def runner_on(model: torch.nn.Module | None) -> EpisodeRunner:
        if server is not None:  # each producer its own generator on the shared server (seeded per batch)
            return TurnSyncRunner(server.generator.sibling(cfg.train.seed))
        pad = tokenizer.pad_token_id
        return make_runner(r.backend, model, pad, max_batch=r.max_batch, prefill_tokens=r.prefill_tokens)

    def sample(runner: EpisodeRunner, cursor: int) -> list[Trajectory]:
        index = list(range(cursor, cursor + per_step))  # one process: the stream's own indices
        rows = [s.train_rows[g % len(s.train_rows)] for g in index for _ in range(r.n)]
        groups = [g for g in index for _ in range(r.n)]
        return [e.traj for e in rollout_episodes(runner, tokenizer, s.task.make_env, rows, groups, params)]

    per_step = r.prompts_per_step
    return AsyncRollouts(
        s.policy.model,
        runner_on,
        sample,
        cursor=s.cursor,
        step=step,
        per_step=per_step,
        max_staleness=r.max_staleness,
        producers=r.producers,
        dtype=torch.bfloat16 if r.dtype == "bfloat16" else torch.float32,
        seed=cfg.train.seed,
        server=server,
        partial=r.partial_rollouts,
    )
