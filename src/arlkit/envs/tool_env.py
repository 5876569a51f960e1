"""ToolEnv: a text-in, text-out multi-turn environment where a model calls tools, then answers.

The env never raises because of model output: malformed calls, unknown tools, bad arguments,
tools that raise or hang all become ``{"role": "tool", "content": "Error: ..."}`` observations.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from arlkit.envs.parsing import ActionFormat, ParsedAction, ToolCall, get_format
from arlkit.envs.rewards import bounded_process_reward, default_reward
from arlkit.errors import ArlkitError
from arlkit.tools.base import (
    RowTool,
    Tool,
    ToolArgumentError,
    ToolResult,
    tool_schema,
    validate_arguments,
)

__all__ = [
    "EPISODE_METRICS",
    "PARSE_ERROR_NAME",
    "REFUSAL",
    "EnvState",
    "EpisodeResult",
    "ProcessReward",
    "RewardFn",
    "Scorer",
    "StepResult",
    "ToolCallRecord",
    "ToolEnv",
    "env_with_instructions",
]

PARSE_ERROR_NAME = "<malformed>"  # ToolCallRecord.name of a call that could not be parsed
REFUSAL = "tool calls are not allowed in this episode; answer directly."
# what `ToolEnv.result` adds to the scorer's metrics; a scorer's own metrics are logged as `env/<name>`
EPISODE_METRICS = frozenset(
    {"format_ok", "tool_syntax_ok", "answer_ok", "n_calls", "n_failed_calls", "tool_rounds", "turns"}
)


@dataclass(frozen=True)
class ToolCallRecord:
    name: str
    arguments: dict
    ok: bool
    latency_s: float
    error: str | None = None


@dataclass(frozen=True)
class StepResult:
    observations: tuple[dict, ...]  # {"role": "tool", "content": str}, one per call; empty when done
    reward: float  # process reward: sum of the tools' ToolResult.reward
    done: bool
    calls: tuple[ToolCallRecord, ...]
    answer: str | None
    finish_reason: str | None  # "answer", "no_action" or "max_turns" when done

    # the general env protocol's (messages, reward, done, info), envs/message_env.py
    @property
    def messages(self) -> tuple[dict, ...]:
        return self.observations

    @property
    def info(self) -> dict[str, Any]:
        return {"calls": self.calls, "answer": self.answer, "finish_reason": self.finish_reason}


@dataclass(frozen=True)
class EpisodeResult:
    reward: float
    metrics: dict[str, float]
    answer: str | None
    finish_reason: str | None  # None if the episode was cut short by the caller


@dataclass(frozen=True)
class EnvState:
    """What a ToolEnv remembers of its episode: enough to continue it from here without re-running tools."""

    row: dict | None
    turns: int
    done: bool
    answer: str | None
    finish_reason: str | None
    records: tuple[ToolCallRecord, ...]
    syntax_errors: int
    process_reward_sum: float = 0.0  # earned so far, against the episode's cap


@runtime_checkable
class Scorer(Protocol):
    """The user message of a row, and the metrics of an answer: `em` (what held-out evaluation reports;
    `f1` defaults to it) and any of the scorer's own, which reach metrics.jsonl as `env/<name>`."""

    def prompt(self, row: dict) -> str: ...

    def score(self, answer: str | None, row: dict) -> dict[str, float]: ...


RewardFn = Callable[[dict[str, float]], float]
# Agent-R1 process reward r_process(s, a, s'): called per tool call with (row, call record, observation
# text); the step's reward is the sum over its calls plus the tools' own ToolResult.reward.
ProcessReward = Callable[[dict, "ToolCallRecord", str], float]


@dataclass
class _Outcome:
    record: ToolCallRecord
    content: str
    reward: float | None = None
    syntax_error: bool = False  # bad format, unknown tool or bad arguments (not runtime failures)


class _CallJob:
    """One tool call, run on a daemon worker thread: a hung tool must not block the env or interpreter exit."""

    def __init__(self, tool: Tool, args: dict) -> None:
        self.tool, self.args = tool, args
        self.result: Any = None
        self.exc: BaseException | None = None
        self.latency_s = 0.0
        self.done = threading.Event()

    def run(self) -> None:
        start = time.perf_counter()
        try:
            self.result = self.tool(**self.args)
        except BaseException as exc:  # reported as an observation; the worker goes on
            self.exc = exc
        finally:
            self.latency_s = time.perf_counter() - start


class _ToolThreads:
    """Daemon threads that run tool calls, kept between calls.

    Starting a thread per call cost ~0.8 ms of a rollout's critical path each on the 2-core VM (256 calls of
    a 64-episode rollout: 0.2-0.5 s); handing a call to a waiting thread costs ~20 us. A call that hangs keeps
    its thread for good (nothing can stop it safely); the next call finds no idle thread and starts one.
    Invariant: `_idle` = threads waiting for work − calls queued for them.
    """

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[_CallJob] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0

    def submit(self, job: _CallJob) -> None:
        with self._lock:
            if self._idle == 0:  # the new thread takes this call (or a thread that frees up first does)
                threading.Thread(target=self._work, name="arlkit-tool", daemon=True).start()
            else:
                self._idle -= 1
        self._calls.put(job)

    def _work(self) -> None:
        while True:
            job = self._calls.get()
            job.run()
            with self._lock:  # idle before the caller wakes, so its next call finds this thread
                self._idle += 1
            job.done.set()


_THREADS = _ToolThreads()


def _reset_tool_threads() -> None:
    global _THREADS
    _THREADS = _ToolThreads()  # a forked child has none of its parent's threads, only their count


os.register_at_fork(after_in_child=_reset_tool_threads)


def _fail(call: ToolCall, message: str, latency_s: float = 0.0, syntax: bool = False) -> _Outcome:
    record = ToolCallRecord(call.name, call.arguments, False, latency_s, message)
    return _Outcome(record, f"Error: {message}", syntax_error=syntax)


class ToolEnv:
    """Multi-turn tool-use episode over one data row; see :meth:`step` for the rules."""

    def __init__(
        self,
        tools: Sequence[Tool],
        scorer: Scorer,
        fmt: str | ActionFormat = "hermes",
        max_turns: int = 4,
        tool_timeout_s: float = 10.0,
        system_prompt: str | None = None,
        refuse_tools: bool = False,
        reward_fn: RewardFn | None = None,
        show_tool_schemas: bool = True,
        process_reward: ProcessReward | None = None,
        max_tool_rounds: int | None = None,
        reward_weights: Mapping[str, float] | None = None,
        max_calls_per_action: int = 8,
        max_concurrent_calls: int = 4,
        process_reward_step_cap: float = 0.3,
        process_reward_episode_cap: float = 0.5,
    ) -> None:
        """`reward_weights` names reward components, metrics of the scorer (or of the episode, such as
        `format_ok`): the final reward is their weighted sum, each logged as `reward/<name>`. Without it
        `reward_fn` (default: Agent-R1's) maps the metrics to the reward.

        Caps against a policy farming tools (issue 19): an action's calls past `max_calls_per_action` are
        not run and get an error observation; at most `max_concurrent_calls` of one action run at once;
        process rewards (the tools' and `process_reward`'s) are bounded per step and per episode
        (rewards.bounded_process_reward) and none is paid on the last turn, whose observations the policy
        never reads."""
        if max_calls_per_action < 1 or max_concurrent_calls < 1:
            raise ArlkitError(
                f"max_calls_per_action and max_concurrent_calls must be >= 1, got {max_calls_per_action}, "
                f"{max_concurrent_calls}"
            )
        if process_reward_step_cap < 0 or process_reward_episode_cap < 0:
            raise ArlkitError(
                f"process reward caps must be >= 0, got {process_reward_step_cap}, {process_reward_episode_cap}"
            )
        self.max_calls_per_action, self.max_concurrent_calls = max_calls_per_action, max_concurrent_calls
        self.process_reward_caps = (process_reward_step_cap, process_reward_episode_cap)
        if reward_weights is not None and reward_fn is not None:
            raise ArlkitError("give a ToolEnv reward_fn or reward_weights, not both")
        self.reward_weights = dict(reward_weights) if reward_weights is not None else None
        self.process_reward = process_reward
        self.show_tool_schemas = show_tool_schemas
        self.tools: dict[str, Tool] = {}
        for t in tools:
            if not isinstance(getattr(t, "name", None), str) or not callable(t):
                raise ArlkitError(f"{t!r} is not a tool: it needs a str 'name' and __call__(**kwargs)")
            if not isinstance(getattr(t, "parameters", None), dict):
                raise ArlkitError(f"tool '{t.name}' needs a JSON-schema dict 'parameters'")
            if t.name in self.tools:
                raise ArlkitError(f"two tools are named '{t.name}'; tool names must be unique")
            self.tools[t.name] = t
        if max_turns < 1:
            raise ArlkitError(f"max_turns must be >= 1, got {max_turns}")
        if tool_timeout_s <= 0:
            raise ArlkitError(f"tool_timeout_s must be > 0, got {tool_timeout_s}")
        self.fmt: ActionFormat = self._make_format(fmt) if isinstance(fmt, str) else fmt
        self.scorer = scorer
        self.max_turns = max_turns
        self.tool_timeout_s = tool_timeout_s
        self.system_prompt = system_prompt
        self.refuse_tools = refuse_tools
        self.max_tool_rounds: int | None = None
        if max_tool_rounds is not None:
            self.limit_tool_rounds(max_tool_rounds)
        self.reward_fn: RewardFn = reward_fn or default_reward
        self._row: dict | None = None
        self._reset_state()

    def _make_format(self, name: str) -> ActionFormat:
        if name != "tags":
            return get_format(name)
        # Each tag carries one string: it fills the tool's first required (else first) parameter.
        params: dict[str, str] = {}
        for tname, t in self.tools.items():
            props = list(t.parameters.get("properties", {}))
            required = list(t.parameters.get("required", []))
            params[tname] = (required or props or ["query"])[0]
        return get_format("tags", tool_names=list(self.tools), param_names=params)

    def limit_tool_rounds(self, rounds: int, answer_turns: int | None = None) -> ToolEnv:
        """Allow at most `rounds` tool rounds (PASS@(k,T)'s cap T, METHODS.md §8): the calls of every later
        round get a refusal observation, so the episode must answer. `rounds=0` refuses every call.

        A tool round is an assistant turn that held tool calls (well-formed or not) and was not refused.
        `answer_turns` also sets `max_turns = rounds + answer_turns`: the turns left to answer after the
        last allowed round (2 lets a policy that tries one more call read the refusal and still answer).
        Returns the env, for chaining.
        """
        if rounds < 0:
            raise ArlkitError(f"max_tool_rounds must be >= 0, got {rounds}")
        if answer_turns is not None:
            if answer_turns < 1:
                raise ArlkitError(f"answer_turns must be >= 1, got {answer_turns}")
            self.max_turns = rounds + answer_turns
        self.max_tool_rounds = rounds
        return self

    @property
    def _capped(self) -> bool:
        """Whether this turn's calls are refused: no tools at all, or the round cap is reached."""
        cap = self.max_tool_rounds
        return self.refuse_tools or (cap is not None and self._tool_rounds >= cap)

    def _reset_state(self) -> None:
        self._turns = 0
        self._tool_rounds = 0
        self._done = False
        self._answer: str | None = None
        self._finish_reason: str | None = None
        self._records: list[ToolCallRecord] = []
        self._syntax_errors = 0
        self._process_reward_sum = 0.0

    def snapshot(self) -> EnvState:
        """The episode's state (cheap: no tool is re-run); `restore` on a copy of the env continues from it."""
        return EnvState(
            self._row,
            self._turns,
            self._done,
            self._answer,
            self._finish_reason,
            tuple(self._records),
            self._syntax_errors,
            self._process_reward_sum,
        )

    def restore(self, state: EnvState) -> None:
        self._row, self._turns, self._done = state.row, state.turns, state.done
        self._answer, self._finish_reason = state.answer, state.finish_reason
        self._records, self._syntax_errors = list(state.records), state.syntax_errors
        self._process_reward_sum = state.process_reward_sum

    @property
    def tools_schema(self) -> list[dict]:
        """Function schemas of the tools, for ``apply_chat_template(..., tools=...)``."""
        return [tool_schema(t) for t in self.tools.values()]

    @property
    def prompt_tools(self) -> list[dict] | None:
        """What the chat template renders as `tools=`: the schemas, or None when the env hides them."""
        return self.tools_schema if self.show_tool_schemas else None

    @property
    def done(self) -> bool:
        return self._done

    def reset(self, row: dict) -> list[dict]:
        """Start an episode on ``row``; returns the first messages (system if any, then user)."""
        prompt = self.scorer.prompt(row)
        self._row = row
        self._reset_state()
        for t in self.tools.values():
            if isinstance(t, RowTool):
                t.bind_row(row)
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*messages, {"role": "user", "content": prompt}]

    def step(self, action: str) -> StepResult:
        """Apply one model action: an answer ends the episode, tool calls produce observations."""
        if self._row is None:
            raise RuntimeError("ToolEnv.step() called before reset()")
        if self._done:
            raise RuntimeError("ToolEnv.step() called after the episode ended; call reset()")
        self._turns += 1
        parsed = self._parse(action)
        if parsed.answer is not None:  # the answer wins: calls in the same action are not run
            self._answer = parsed.answer
            return self._finish("answer", ())
        if not parsed.calls and not parsed.errors:
            return self._finish("no_action", ())
        refused = self._capped
        cap = self.max_calls_per_action
        outcomes = self._run_calls(parsed.calls[:cap], refused)
        outcomes += [_fail(c, f"not run: at most {cap} tool calls per action") for c in parsed.calls[cap:]]
        self._tool_rounds += int(not refused)
        outcomes += [_fail(ToolCall(PARSE_ERROR_NAME, {}), e, syntax=True) for e in parsed.errors]
        self._syntax_errors += sum(o.syntax_error for o in outcomes)
        records = tuple(o.record for o in outcomes)
        self._records += records
        if self._turns >= self.max_turns:  # the policy never sees these results: they earn nothing
            return self._finish("max_turns", records)
        reward = self._process_reward(outcomes)
        observations = tuple({"role": "tool", "content": o.content} for o in outcomes)
        return StepResult(observations, reward, False, records, None, None)

    def _process_reward(self, outcomes: list[_Outcome]) -> float:
        total = float(sum(o.reward for o in outcomes if o.reward is not None))
        if self.process_reward is not None:
            total += sum(float(self.process_reward(self._row, o.record, o.content)) for o in outcomes)
        reward = bounded_process_reward(total, self._process_reward_sum, *self.process_reward_caps)
        self._process_reward_sum += reward
        return reward

    def _parse(self, action: str) -> ParsedAction:
        try:
            return self.fmt.parse(action)
        except Exception as exc:  # a custom format must not crash a rollout
            return ParsedAction((), (f"could not parse the message ({type(exc).__name__}: {exc})",), None)

    def _finish(self, reason: str, records: tuple[ToolCallRecord, ...], reward: float = 0.0) -> StepResult:
        self._done, self._finish_reason = True, reason
        return StepResult((), reward, True, records, self._answer, reason)

    def _prepare(self, call: ToolCall, refused: bool) -> _CallJob | _Outcome:
        """A job ready to run, or the error outcome of a call that cannot run."""
        if refused:
            return _fail(call, REFUSAL)
        tool = self.tools.get(call.name)
        if tool is None:
            available = ", ".join(self.tools) or "none"
            return _fail(call, f"unknown tool '{call.name}'; available: {available}", syntax=True)
        try:
            args = validate_arguments(tool.parameters, call.arguments)
        except ToolArgumentError as exc:
            return _fail(call, f"invalid arguments for tool '{call.name}': {exc}", syntax=True)
        return _CallJob(tool, args)

    def _run_calls(self, calls: Sequence[ToolCall], refused: bool = False) -> list[_Outcome]:
        """Run the calls, at most `max_concurrent_calls` at once, each under ``tool_timeout_s``; outcomes in call order (all refused when
        `refused`)."""
        prepared = [self._prepare(c, refused) for c in calls]
        jobs = [p for p in prepared if isinstance(p, _CallJob)]
        width = self.max_concurrent_calls  # waves of at most this many, each under the timeout
        for wave in (jobs[i : i + width] for i in range(0, len(jobs), width)):
            for job in wave:
                _THREADS.submit(job)
            deadline = time.monotonic() + self.tool_timeout_s
            for job in wave:
                job.done.wait(max(0.0, deadline - time.monotonic()))
        return [
            p if isinstance(p, _Outcome) else self._collect(c, p)
            for c, p in zip(calls, prepared, strict=True)
        ]

    def _collect(self, call: ToolCall, job: _CallJob) -> _Outcome:
        name = call.name
        if not job.done.is_set():  # left running on its worker thread; nothing can stop it safely
            return _fail(
                call, f"tool '{name}' timed out after {self.tool_timeout_s:g} s", self.tool_timeout_s
            )
        if isinstance(job.exc, ToolArgumentError):
            return _fail(call, f"invalid arguments for tool '{name}': {job.exc}", job.latency_s, syntax=True)
        if job.exc is not None:
            message = f"tool '{name}' failed: {type(job.exc).__name__}: {job.exc}"
            return _fail(call, message, job.latency_s)
        result = ToolResult(job.result) if isinstance(job.result, str) else job.result
        if not isinstance(result, ToolResult):
            message = f"tool '{name}' returned {type(result).__name__} instead of a ToolResult"
            return _fail(call, message, job.latency_s)
        record = ToolCallRecord(
            name, call.arguments, result.ok, job.latency_s, None if result.ok else result.text
        )
        return _Outcome(record, result.text, result.reward)

    def result(self) -> EpisodeResult:
        """Score the episode so far (usually after ``done``; a cut-short episode has no answer)."""
        if self._row is None:
            raise RuntimeError("ToolEnv.result() called before reset()")
        scores = self.scorer.score(self._answer, self._row)
        if "em" not in scores:
            raise ArlkitError(f"scorer {type(self.scorer).__name__}.score() must return 'em'")
        answer_ok = self._answer is not None
        syntax_ok = self._syntax_errors == 0
        metrics = {k: float(v) for k, v in scores.items()}
        metrics.setdefault("f1", metrics["em"])
        metrics.update(
            format_ok=float(answer_ok and syntax_ok),
            tool_syntax_ok=float(syntax_ok),
            answer_ok=float(answer_ok),
            n_calls=float(len(self._records)),
            n_failed_calls=float(sum(not r.ok for r in self._records)),
            tool_rounds=float(self._tool_rounds),
            turns=float(self._turns),
        )
        return EpisodeResult(self._reward(metrics), metrics, self._answer, self._finish_reason)

    def _reward(self, metrics: dict[str, float]) -> float:
        """The final reward; with `reward_weights`, their weighted sum, each component added to `metrics`."""
        if self.reward_weights is None:
            return float(self.reward_fn(metrics))
        missing = sorted(set(self.reward_weights) - set(metrics))
        if missing:
            raise ArlkitError(
                f"reward components {missing} are not metrics of the episode; the scorer returns "
                f"{sorted(set(metrics) - EPISODE_METRICS)}, the env adds {sorted(EPISODE_METRICS)}"
            )
        metrics.update({f"reward/{k}": metrics[k] for k in self.reward_weights})
        return float(sum(w * metrics[k] for k, w in self.reward_weights.items()))


def env_with_instructions(tools: Sequence[Tool], scorer: Scorer, task_prompt: str, **kw: Any) -> ToolEnv:
    """A :class:`ToolEnv` whose system message defaults to `task_prompt` followed by the action format's
    instructions; an explicit ``system_prompt=None`` means no system message."""
    env = ToolEnv(tools, scorer, **kw)
    if "system_prompt" not in kw:
        env.system_prompt = f"{task_prompt}\n\n{env.fmt.instructions()}"
    return env
