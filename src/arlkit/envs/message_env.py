"""The general multi-turn env protocol, in messages: `reset(row) -> messages`, `step(assistant_message) ->
(messages, reward, done, info)`; and its adapter to the episode interface the rollout engine drives.

ToolEnv is the built-in implementation (tool calls, timeouts, error observations); its StepResult reads as
the same four fields (`messages`, `reward`, `done`, `info`). Any other env (a text game, a judge, a
wrapped framework's env) implements the two methods and a task's `make_env` returns it; the engine wraps it
in `MessageEnvEpisode`. Text only, no torch.

Rewards: each step's reward adds to the episode's return, the final reward of the trajectory. A step may name
reward components in `info["rewards"]` ({name: value}): their sums over the episode are logged as
`reward/<name>`. Metrics in the final step's `info["metrics"]` are logged as `env/<name>`; `em` (what
held-out evaluation reports) is `info["metrics"]["em"]` when given, else whether the return is positive.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, runtime_checkable

from arlkit.envs.tool_env import EpisodeResult, StepResult
from arlkit.errors import ArlkitError

__all__ = ["EnvStep", "MessageEnv", "MessageEnvEpisode", "episode_env"]


class EnvStep(NamedTuple):
    """What one step gives back: the messages that follow the assistant's (observations, feedback), the
    step's reward, whether the episode ended, and free-form info (see the module docstring for its keys)."""

    messages: list[dict]
    reward: float
    done: bool
    info: dict


@runtime_checkable
class MessageEnv(Protocol):
    def reset(self, row: dict) -> list[dict]: ...

    def step(self, assistant_message: str) -> EnvStep | tuple[list[dict], float, bool, dict]: ...


@dataclass(frozen=True)
class _Tags:
    """The delimiters the engine marks as ACTION tokens; a text env's actions are plain text, so no model
    output normally holds them, and the whole message counts as reasoning/answer text."""

    call_open: str = "<tool_call>"
    call_close: str = "</tool_call>"


@dataclass
class MessageEnvEpisode:
    """A MessageEnv as the rollout engine drives it (ToolEnv's episode interface: `step` returns a
    StepResult, `result` the episode's reward and metrics)."""

    env: Any
    fmt: _Tags = field(default_factory=_Tags)
    prompt_tools: list[dict] | None = None
    _return: float = 0.0
    _components: dict[str, float] = field(default_factory=dict)
    _metrics: dict[str, float] = field(default_factory=dict)
    _reason: str | None = None

    def reset(self, row: dict) -> list[dict]:
        self._return, self._components, self._metrics, self._reason = 0.0, {}, {}, None
        try:
            return _messages(self.env.reset(row), "reset")
        except TypeError as e:  # an env that cannot start an episode stops the run at its first one
            raise ArlkitError(str(e)) from None

    def step(self, action: str) -> StepResult:
        messages, reward, done, info = _checked_step(self.env.step(action))
        self._return += reward
        for name, value in (info.get("rewards") or {}).items():
            self._components[name] = self._components.get(name, 0.0) + float(value)
        if done:
            self._metrics = {k: float(v) for k, v in (info.get("metrics") or {}).items()}
            self._reason = str(info.get("finish_reason", "done"))
        answer = info.get("answer")
        # the step reward goes to the return (the outcome), not to the turn: every estimator sees it once
        return StepResult(tuple(messages), 0.0, done, (), answer, self._reason)

    def result(self) -> EpisodeResult:
        metrics = dict(self._metrics)
        metrics.setdefault("em", float(self._return > 0))
        metrics.setdefault("f1", metrics["em"])
        metrics.update({f"reward/{k}": v for k, v in self._components.items()})
        metrics.setdefault("format_ok", 1.0)
        return EpisodeResult(self._return, metrics, None, self._reason)


def episode_env(env: Any) -> Any:
    """`env` as the engine drives it: a ToolEnv (or anything with `result()`) as it is, a MessageEnv wrapped.

    Raises:
        TypeError: `env` has neither interface.
    """
    if callable(getattr(env, "result", None)):
        return env
    if isinstance(env, MessageEnv):  # an env with tools says so in `prompt_tools`, for the chat template
        return MessageEnvEpisode(env, prompt_tools=getattr(env, "prompt_tools", None))
    raise TypeError(f"{type(env).__name__} is not an env: it needs reset(row) and step(assistant_message)")


def _messages(value: Any, where: str) -> list[dict]:
    ok = isinstance(value, list) and all(isinstance(m, Mapping) and "role" in m for m in value)
    if not ok:
        raise TypeError(
            f"env {where}() must return a list of messages ({{'role': ..., 'content': ...}}), got {value!r}"
        )
    return [dict(m) for m in value]


def _checked_step(value: Any) -> tuple[list[dict], float, bool, dict]:
    if not (isinstance(value, tuple) and len(value) == 4):
        raise TypeError(f"env step() must return (messages, reward, done, info), got {value!r}")
    messages, reward, done, info = value
    if not isinstance(reward, numbers.Real) or not math.isfinite(reward):
        raise TypeError(f"env step() reward must be a finite number, got {reward!r}")
    if not isinstance(info, Mapping):
        raise TypeError(f"env step() info must be a dict, got {info!r}")
    return _messages(messages, "step"), float(reward), bool(done), dict(info)
