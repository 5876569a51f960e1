"""Tool calls executed in a pool of Ray actors (the `ray` extra): retrievers, SQL, sandboxes that outgrow the
trainer's machine, or that should not share its process.

Each actor builds its own tool instances once, from a picklable factory (`() -> list[Tool]`). The env keeps
`RemoteTool` proxies with the same name, description and schema, so prompts, parsing and argument validation
are unchanged and a result is the one the in-process tool would give. Failures follow the in-process paths:
a raising tool becomes "tool 'x' failed: <Type>: <message>" (the original exception type's name), bad
arguments become the same syntax-error observation, and a call that outlives `timeout_s` (or whose actor
died) raises `ToolTimeout`/`ToolActorDied` inside the env's call, hence an error observation; the hung actor
is killed and replaced, so a stuck tool never stalls the run.

Back-pressure: at most `max_in_flight` calls are submitted to one actor; further callers wait for a free slot
(the wait does not count towards the timeout). An actor runs one call at a time, so with `max_in_flight > 1`
queued calls' waiting time counts (it hides round-trip latency for fast tools). Text only: no torch here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from arlkit.errors import ArlkitError
from arlkit.tools.base import RowTool, Tool, ToolArgumentError, ToolResult

STARTUP_TIMEOUT_S = 120.0  # how long a new actor may take to start (import, build its tools)

ToolFactory = Callable[[], Sequence[Tool]]


class ToolTimeout(RuntimeError):
    """A remote tool call outlived the pool's timeout; its actor was replaced."""


class ToolActorDied(RuntimeError):
    """The actor running a call died (killed after another call's timeout, or crashed); it was replaced."""


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict
    row_bound: bool  # a RowTool: the episode's row travels with each call


class ToolHost:
    """The actor's body: tool instances built once, called one at a time."""

    def __init__(self, factory: ToolFactory):
        self.tools = {t.name: t for t in factory()}

    def specs(self) -> list[ToolSpec]:
        return [
            ToolSpec(t.name, t.description, t.parameters, isinstance(t, RowTool)) for t in self.tools.values()
        ]

    def call(self, name: str, args: dict, row: dict | None) -> tuple[str, Any, float]:
        """("ok", ToolResult | str, latency) or ("error", (type name, message, is-argument-error), latency)."""
        tool = self.tools[name]
        start = time.perf_counter()
        try:
            if row is not None:
                tool.bind_row(row)  # type: ignore[attr-defined]
            out = tool(**args)
            return "ok", out, time.perf_counter() - start
        except BaseException as exc:  # reported to the caller, like the env's own call thread does
            error = (type(exc).__name__, str(exc), isinstance(exc, ToolArgumentError))
            return "error", error, time.perf_counter() - start


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ArlkitError("ray.enabled needs Ray: pip install 'arlkit[ray]'") from None
    return ray


class ToolPool:
    """`num_actors` Ray actors hosting the factory's tools; see the module docstring for the rules.

    `address`: a running Ray cluster ("auto", "ray://host:10001"); None starts (or joins) a local runtime.
    """

    def __init__(
        self,
        factory: ToolFactory,
        num_actors: int = 2,
        timeout_s: float = 10.0,
        max_in_flight: int = 1,
        address: str | None = None,
        num_cpus: float = 1.0,
    ):
        if num_actors < 1 or max_in_flight < 1 or timeout_s <= 0:
            raise ArlkitError(
                f"ray: num_tool_actors ({num_actors}) and max_in_flight ({max_in_flight}) must be >= 1 and "
                f"tool_timeout_s ({timeout_s}) > 0"
            )
        ray = _ray()
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        self._actor_cls = ray.remote(num_cpus=num_cpus, max_restarts=0)(ToolHost)
        self._factory = ray.put(factory)
        self.timeout_s, self.max_in_flight = timeout_s, max_in_flight
        self._actors = [self._start() for _ in range(num_actors)]
        self._busy = [0] * num_actors
        self._cond = threading.Condition()
        self.replaced = 0  # actors killed and restarted (timeouts, deaths)
        self._ready: set[int] = set()  # slots whose actor is known to have started
        self.specs: list[ToolSpec] = ray.get(self._actors[0].specs.remote())
        for i in range(num_actors):
            self._wait_started(i, self._actors[i])

    def _start(self) -> Any:
        return self._actor_cls.remote(self._factory)

    def _wait_started(self, i: int, actor: Any) -> None:
        """Block until slot i's `actor` has built its tools, so that a call's timeout never counts an actor's
        start-up (seconds on a loaded machine) against the tool."""
        if i in self._ready:
            return
        ray = _ray()
        try:
            ray.get(actor.specs.remote(), timeout=STARTUP_TIMEOUT_S)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError):
            return  # the call that follows fails and replaces it
        with self._cond:
            if self._actors[i] is actor:
                self._ready.add(i)

    def _acquire(self) -> int:
        """The least-busy actor with a free slot, waiting while every actor is full (back-pressure)."""
        with self._cond:
            while min(self._busy) >= self.max_in_flight:
                self._cond.wait()
            i = min(range(len(self._busy)), key=self._busy.__getitem__)
            self._busy[i] += 1
            return i

    def _release(self, i: int) -> None:
        with self._cond:
            self._busy[i] -= 1
            self._cond.notify()

    def _replace(self, i: int, actor: Any) -> None:
        """Kill `actor` and start a fresh one in slot i, unless another caller already did."""
        ray = _ray()
        with self._cond:
            if self._actors[i] is not actor:
                return
            self._actors[i] = self._start()
            self._ready.discard(i)
            self.replaced += 1
        ray.kill(actor, no_restart=True)

    def call(self, name: str, args: dict, row: dict | None = None) -> Any:
        """Run tool `name` in an actor; returns what the tool returned, raises what the env turns into an
        error observation."""
        ray = _ray()
        i = self._acquire()
        actor = self._actors[i]
        try:
            self._wait_started(i, actor)
            ref = actor.call.remote(name, args, row)
            try:
                status, payload, _ = ray.get(ref, timeout=self.timeout_s)
            except ray.exceptions.GetTimeoutError:
                self._replace(i, actor)
                raise ToolTimeout(f"no result within {self.timeout_s:g} s in a Ray actor") from None
            except ray.exceptions.RayActorError as exc:
                self._replace(i, actor)
                raise ToolActorDied(f"its Ray actor died ({type(exc).__name__})") from None
        finally:
            self._release(i)
        if status == "ok":
            return payload
        type_name, message, argument_error = payload
        if argument_error:
            raise ToolArgumentError(message)
        # an exception of the same *name* as the tool's, so the observation reads as in-process
        raise type(type_name, (RuntimeError,), {})(message)

    def tools(self) -> list[RemoteTool]:
        """Fresh proxies, one per hosted tool (one set per env: a row-bound proxy remembers its row)."""
        return [RemoteTool(self, spec) for spec in self.specs]

    def shutdown(self) -> None:
        ray = _ray()
        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self._actors = []


class RemoteTool:
    """A Tool whose calls run in a ToolPool's actors."""

    def __init__(self, pool: ToolPool, spec: ToolSpec):
        self.pool, self.spec = pool, spec
        self.name, self.description, self.parameters = spec.name, spec.description, spec.parameters
        self._row: dict | None = None

    def bind_row(self, row: dict) -> None:
        if self.spec.row_bound:
            self._row = row

    def __call__(self, **kwargs: Any) -> ToolResult | str:
        return self.pool.call(self.name, kwargs, self._row)
