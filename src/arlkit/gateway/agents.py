"""Running a user's agent function on task rows through the gateway, and turning its episodes into rows.

An agent is `async def run(client, row)`: an `openai.AsyncOpenAI` pointed at the episode's own base URL, and the
task row. It returns the episode's reward (a number), or a dict `{"reward": r, <metric>: value, ...}`, or None
after reporting `{"reward": ...}` to the reward endpoint. A group's episodes run concurrently; an agent that
raises or outlives `timeout_s` ends its episode as an env error (counted, left out of the update), and its
session is closed so a request it still sends gets 409.

Each episode becomes one Trajectory per segment (recorder.py). Every segment carries the episode's reward and
metadata `episode` (its index in the batch), `segment` and `n_segments`; the trainer gives all segments of an
episode the episode's advantage (train/segments.py).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from arlkit.errors import ArlkitError
from arlkit.gateway.server import Gateway
from arlkit.tasks.resolve import cwd_importable
from arlkit.trajectory import Trajectory

AgentFn = Callable[[Any, dict], Awaitable[Any]]


def load_agent(path: str) -> AgentFn:
    """The async function `module:function` names (the working directory is importable).

    Raises:
        ArlkitError: not an import path, a module that does not import, or not an async function.
    """
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ArlkitError(
            f"config field 'rollout.agent': {path!r} is not an import path such as my_pkg.agent:run"
        )
    cwd_importable()
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ArlkitError(f"config field 'rollout.agent': cannot import {path!r}: {e}") from None
    if not inspect.iscoroutinefunction(fn):
        raise ArlkitError(
            f"config field 'rollout.agent': {path!r} must be an async function (async def run(client, row))"
        )
    return fn


@dataclass
class AgentEpisode:
    """One finished episode: its segments, reward, metrics, and the error that ended it, if any."""

    segments: list[Trajectory]
    group: int
    reward: float
    metrics: dict[str, float]
    error: str | None
    seconds: float
    discarded_choices: int
    requests: int
    tool_calls: int = 0


async def _one(
    gateway: Gateway, agent: AgentFn, row: dict, group: int, timeout_s: float, http: Any
) -> AgentEpisode:
    from openai import AsyncOpenAI

    session = gateway.open_session(group, row)
    client = AsyncOpenAI(
        base_url=gateway.session_url(session.id),
        api_key=gateway.api_key or "arlkit",
        max_retries=0,
        timeout=timeout_s,
        http_client=http,  # shared: a client of its own loads the system's CA store (~30 ms) per episode
    )
    t0, result, error = time.perf_counter(), None, None
    try:
        result = await asyncio.wait_for(agent(client, row), timeout_s)
    except asyncio.TimeoutError:
        error = f"TimeoutError: the agent ran past rollout.agent_timeout_s={timeout_s:g}"
    except Exception as e:  # the agent's own bug: this episode ends, the run goes on
        error = f"{type(e).__name__}: {e}"
    finally:
        gateway.close_session(session.id)
    reward, metrics = session.reward, dict(session.metrics)
    if error is None:
        try:
            reward, metrics = _outcome(result, reward, metrics)
        except TypeError as e:
            error = f"TypeError: {e}"
    if error is None and not session.segments():
        error = "the agent finished without a request to the gateway"
    return AgentEpisode(
        session.segments(),
        group,
        reward if error is None else 0.0,
        metrics,
        error,
        time.perf_counter() - t0,
        session.discarded_choices,
        session.requests,
        session.tool_calls,
    )


def _outcome(
    result: Any, reported: float | None, metrics: dict[str, float]
) -> tuple[float, dict[str, float]]:
    if isinstance(result, dict):
        if "reward" not in result:
            raise TypeError(f"an agent's dict result needs a 'reward', got keys {sorted(result)}")
        metrics = {**metrics, **{k: float(v) for k, v in result.items() if k != "reward"}}
        result = result["reward"]
    if result is None:
        result = reported
    if isinstance(result, bool) or not isinstance(result, (int, float)) or not math.isfinite(result):
        raise TypeError(f"the agent must return a finite reward (or report one), got {result!r}")
    return float(result), metrics


def run_agents(
    gateway: Gateway,
    agent: AgentFn,
    rows: Sequence[dict],
    groups: Sequence[int],
    timeout_s: float,
    concurrency: int = 256,
) -> list[AgentEpisode]:
    """Run one episode of `agent` per row, `concurrency` at a time; episodes in the order of `rows`."""

    async def main() -> list[AgentEpisode]:
        from openai import DefaultAsyncHttpxClient

        gate = asyncio.Semaphore(concurrency)
        async with DefaultAsyncHttpxClient() as http:

            async def bounded(row: dict, group: int) -> AgentEpisode:
                async with gate:
                    return await _one(gateway, agent, row, group, timeout_s, http)

            return list(await asyncio.gather(*(bounded(r, g) for r, g in zip(rows, groups, strict=True))))

    return asyncio.run(main())


def episode_trajectories(episodes: Sequence[AgentEpisode]) -> list[Trajectory]:
    """The training rows of `episodes`: one per segment, each with the episode's reward and metrics. An
    episode that ended in an error is one row marked `env_error` (left out of the update, counted)."""
    out: list[Trajectory] = []
    for index, ep in enumerate(episodes):
        segs = ep.segments or [Trajectory(group_id=ep.group)]
        if ep.error is not None:
            segs = segs[-1:]
        for k, t in enumerate(segs):
            metrics = {"em": float(ep.reward > 0), **ep.metrics}
            metrics.setdefault("f1", metrics["em"])
            metrics.setdefault("format_ok", 1.0)
            metrics.setdefault("n_calls", float(ep.tool_calls))
            t.reward = ep.reward
            t.metadata.update(
                {
                    "episode": index,
                    "segment": k,
                    "n_segments": len(segs),
                    "finish_reason": "env_error" if ep.error else "agent_done",
                    "metrics": metrics,
                    "agent_seconds": round(ep.seconds, 3),
                }
            )
            if ep.error is not None:
                t.metadata["env_error"] = ep.error
            out.append(t)
    return out


class AgentRollout:
    """The agent path of a run: the gateway (started once and kept across steps) and the agent function.
    `run` gives the training rows of one episode per row; `metrics` what the last run did."""

    def __init__(self, agent: AgentFn, gateway: Gateway, timeout_s: float, concurrency: int):
        self.agent, self.gateway = agent, gateway
        self.timeout_s, self.concurrency = timeout_s, concurrency
        self._last: dict[str, float] = {}

    def run(self, rows: Sequence[dict], groups: Sequence[int], temperature: float) -> list[Trajectory]:
        self.gateway.set_sampling(temperature=temperature)
        service = self.gateway.service
        busy0, t0 = service.busy_s, time.perf_counter()
        episodes = run_agents(self.gateway, self.agent, rows, groups, self.timeout_s, self.concurrency)
        wall = time.perf_counter() - t0
        n = max(len(episodes), 1)
        self._last = {
            "gateway/requests_per_episode": sum(e.requests for e in episodes) / n,
            "gateway/segments_per_episode": sum(len(e.segments) for e in episodes) / n,
            "gateway/discarded_choices": float(sum(e.discarded_choices for e in episodes)),
            "gateway/agent_errors": float(sum(e.error is not None for e in episodes)),
            # the share of the rollout's wall time the model was generating (the rest: agents, tools, HTTP)
            "gateway/generation_share": (service.busy_s - busy0) / max(wall, 1e-9),
        }
        return episode_trajectories(episodes)

    def metrics(self) -> dict[str, float]:
        return dict(self._last)

    def close(self) -> None:
        self.gateway.stop()


def build_agent_rollout(
    agent_path: str,
    runner: Any,
    tokenizer: Any,
    fmt: Any,
    *,
    max_length: int,
    max_new_tokens: int,
    top_p: float,
    api_key: str | None = None,
    port: int = 0,
    gather_s: float = 0.01,
    max_batch: int = 256,
    timeout_s: float = 300.0,
    concurrency: int = 256,
    concurrent_batches: int = 1,
) -> AgentRollout:
    """The agent and a started gateway in front of `runner` (the run's EpisodeRunner). `fmt`: the action
    format tool calls are parsed with (the task env's). `concurrent_batches` > 1 for a runner that serves
    several batches at once (a vLLM server); arlkit's engine takes one at a time."""
    from arlkit.gateway.service import GenerationService, Sampling
    from arlkit.rollout.spans import SpanTags, scanner_for

    for module in ("fastapi", "uvicorn", "openai"):
        try:
            importlib.import_module(module)
        except ImportError:
            raise ArlkitError(
                f"rollout.agent needs {module}: pip install 'arlkit[gateway]' (make install does)"
            ) from None
    agent = load_agent(agent_path)
    spans = scanner_for(tokenizer, SpanTags(fmt.call_open, fmt.call_close))
    service = GenerationService(
        runner, spans, tokenizer.eos_token_id, max_length, max_batch, gather_s, concurrent_batches
    )
    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=1.0, top_p=top_p)
    gateway = Gateway(service, tokenizer, fmt, spans, sampling, api_key=api_key).start(port=port)
    return AgentRollout(agent, gateway, timeout_s, concurrency)
