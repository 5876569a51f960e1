"""Multi-turn episodes and the runners that drive them: generate → decode → env.step → append observation ids.

An `Episode` is one prompt's env, conversation and Trajectory. An `EpisodeRunner` drives episodes to completion:
`TurnSyncRunner` wraps any stateless `Generator` (all live episodes generate one turn together, re-prefilling
their whole context each turn); `ContinuousEngine` (rollout/continuous.py) keeps each episode's KV cache across
turns. Either way the generated ids go to the Trajectory exactly as sampled; only their decoded text goes to the
environment (token-in/token-out).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from arlkit.envs.message_env import episode_env
from arlkit.errors import ArlkitError
from arlkit.rollout.chat import ChatFormatter
from arlkit.rollout.generator import Generator, SamplingParams
from arlkit.rollout.spans import SpanTags, scanner_for
from arlkit.trajectory import GENERATED_ROLES, Role, Trajectory


@dataclass(frozen=True)
class RolloutParams:
    """Limits and sampling of one rollout batch."""

    max_turns: int = 4
    max_new_tokens: int = 64  # per turn
    max_length: int = 1024  # whole episode, prompt included
    temperature: float = 1.0
    top_p: float = 1.0


@dataclass
class PartialTurn:
    """Generated ids of the current turn that precede the runner's own (a branch resumes inside a turn)."""

    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class _Checkpoint:
    """What an episode looked like when a turn began: lets `branch` resume there without re-running tools."""

    env: Any
    n_messages: int
    n_text: int


class Episode:
    """One episode in progress: its env, conversation, decoded context text and Trajectory.

    `advance` takes one turn's generated ids, whoever produced them (a runner in RL, a script for SFT
    demonstrations), so demonstrations and rollouts are tokenised by the same code. `donor` names an episode
    whose first `donor_len` ids equal this one's: a runner that caches keys and values copies them instead of
    prefilling (the n samples of a group, forks and branches).
    """

    def __init__(self, env: Any, tokenizer: Any, row: dict, group_id: int, params: RolloutParams):
        env = episode_env(env)  # a ToolEnv as it is; an env of the message protocol through its adapter
        self.env, self.tokenizer, self.row, self.params = env, tokenizer, row, params
        self.messages: list[dict] = list(env.reset(row))
        self.chat = ChatFormatter(tokenizer, env.prompt_tools)
        self.spans = scanner_for(tokenizer, SpanTags(env.fmt.call_open, env.fmt.call_close))
        seg = self.chat.prompt(self.messages)
        if len(seg.ids) >= params.max_length:  # nothing could be generated; the episode would be noise
            raise ArlkitError(
                f"the prompt of row {row.get('id', '?')!r} has {len(seg.ids)} tokens but the episode limit "
                f"rollout.max_length is {params.max_length}; raise rollout.max_length"
            )
        self.text = seg.text  # decoded context: what the template renders for `messages` so far
        self.traj = Trajectory(group_id=group_id, metadata=self._initial_metadata())
        self.traj.extend_context(seg.ids, Role.PROMPT)
        self.done = False
        self.partial = PartialTurn()
        self.donor: Episode | None = None
        self.donor_len = 0
        self._checkpoints = [self._checkpoint()]

    def _initial_metadata(self) -> dict:
        return {"id": self.row.get("id"), "question": self.row.get("question")}

    def _checkpoint(self) -> _Checkpoint:
        snap = self.env.snapshot() if hasattr(self.env, "snapshot") else None
        return _Checkpoint(snap, len(self.messages), len(self.text))

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """Ids that end a turn; a turn also ends once its text closes a tool call (`self.spans`)."""
        return (self.tokenizer.eos_token_id,)

    def context_ids(self) -> list[int]:
        """The ids the next token is conditioned on: the trajectory plus the partial turn."""
        return self.traj.token_ids + self.partial.ids

    def turn_budget(self) -> int:
        """How many more ids the current turn may generate (per-turn cap and episode length cap)."""
        n = len(self.partial.ids)
        return min(self.params.max_new_tokens - n, self.params.max_length - len(self.traj) - n)

    def advance(
        self,
        ids: list[int],
        logprobs: list[float] | None = None,
        entropies: list[float] | None = None,
        finish_reason: str = "stop",
    ) -> None:
        """Append one turn's generated ids, step the env, and append its observation (or finish)."""
        decoded = self.take_turn(ids, logprobs, entropies, finish_reason)
        self.apply_step(self.env_step(decoded))

    def take_turn(
        self,
        ids: list[int],
        logprobs: list[float] | None = None,
        entropies: list[float] | None = None,
        finish_reason: str = "stop",
    ) -> str:
        """The first part of `advance`: record the turn's ids; returns the decoded action for the env."""
        p = self.partial
        if p.ids:  # the turn began before this runner took over (a branch)
            nan = [math.nan] * len(ids)
            ids = p.ids + list(ids)
            logprobs = p.logprobs + list(logprobs[: len(nan)] if logprobs is not None else nan)
            entropies = p.entropies + list(entropies[: len(nan)] if entropies is not None else nan)
            self.partial = PartialTurn()
        budget = self.params.max_length - len(self.traj)
        if len(ids) > budget:
            ids, finish_reason = ids[:budget], "length"
        logprobs = list(logprobs[: len(ids)]) if logprobs is not None else [math.nan] * len(ids)
        entropies = list(entropies[: len(ids)]) if entropies is not None else None
        self.traj.add_turn(ids, self.spans.roles(ids), logprobs, entropies, finish_reason)
        decoded = self.tokenizer.decode(ids, skip_special_tokens=False)
        self.text += decoded
        self.messages.append({"role": "assistant", "content": _strip_eos(decoded, self.tokenizer.eos_token)})
        return decoded

    def env_step(self, decoded: str) -> Any:
        """The env's step on the decoded action (its tool calls): the part of `advance` that may wait, and
        touches nothing but the env, so several episodes' steps can run at once (`advance_all`). An env that
        raises gives its exception back (a configuration error is raised)."""
        try:
            return self.env.step(decoded)
        except ArlkitError:  # a configuration error stops the run with its message
            raise
        except Exception as exc:  # a bug in env code, not the model's doing (a failed tool call never raises)
            return exc

    def apply_step(self, step: Any) -> None:
        """The last part of `advance`: the step's outcome, then the observation's ids (or the episode's end)."""
        if isinstance(step, Exception):
            self.crash(step)
            return
        self.traj.set_turn_outcome(step.calls, step.reward)
        if step.done:
            self.finish(step.finish_reason or "done")
            return
        if self.traj.n_turns >= self.params.max_turns:
            self.finish("max_turns")  # the rollout's turn budget, when tighter than the env's
            return
        self.messages.extend(step.observations)
        seg = self.chat.continuation(self.text, self.messages)
        if len(self.traj) + len(seg.ids) + 1 > self.params.max_length:
            self.finish("context_length")  # no room left to generate after this observation
            return
        self.traj.add_observation(seg.ids, [str(m.get("content", "")) for m in step.observations])
        self.text += seg.text
        self._checkpoints.append(self._checkpoint())

    def finish(self, reason: str) -> None:
        try:
            result = self.env.result()
        except ArlkitError:
            raise
        except Exception as exc:
            self.crash(exc)
            return
        self.done = True
        self.traj.reward = float(result.reward)
        self.traj.metadata.update(
            {
                "finish_reason": reason,
                "answer": result.answer,
                "gold": self.row.get("answer"),
                "kind": self.row.get("kind"),
                "metrics": dict(result.metrics),
            }
        )

    def crash(self, exc: Exception) -> None:
        """End the episode because its env raised: reward 0, the error in `metadata["env_error"]`; the loop
        leaves such episodes out of the update (train/guards.py) instead of stopping the run."""
        self.done = True
        self.traj.reward = 0.0
        self.traj.metadata.update(
            {
                "finish_reason": "env_error",
                "env_error": f"{type(exc).__name__}: {exc}",
                "answer": None,
                "gold": self.row.get("answer"),
                "kind": self.row.get("kind"),
                "metrics": {},
            }
        )

    def fork(self) -> Episode:
        """An independent copy that continues this live episode's tool loop from here (ARPO branches,
        arXiv 2507.19849). The env state is copied, no tool is re-run; this episode is the fork's donor."""
        if self.done:
            raise ArlkitError("cannot fork a finished episode; use Episode.branch(pos) to resume inside it")
        new = copy.copy(self)
        new.env = _copy_env(self.env, self.env.snapshot() if hasattr(self.env, "snapshot") else None)
        new.messages = [dict(m) for m in self.messages]
        new.traj = copy.deepcopy(self.traj)
        new.partial = copy.deepcopy(self.partial)
        new._checkpoints = list(self._checkpoints)
        new.donor, new.donor_len = self, len(self.context_ids())
        new.traj.branch_pos = new.donor_len - 1
        return new

    def branch(self, pos: int) -> Episode:
        """A new episode that keeps this one's ids c_≤pos as they are and generates the rest of that turn and
        the turns after it through the same tool loop (APPO branched rollouts, arXiv 2606.12384).

        Raises:
            ArlkitError: `pos` is not the position of a generated token.
        """
        t = self.traj
        if not 0 <= pos < len(t) or t.roles[pos] not in GENERATED_ROLES:
            raise ArlkitError(f"branch position {pos} is not a generated token of this trajectory")
        new = self._resume(t.turn[pos], pos + 1)
        new.traj.branch_pos = pos
        return new

    def resume_turn(self, k: int) -> Episode:
        """A new episode that keeps everything before turn k and generates turn k anew (ARPO's branch after
        a tool response, arXiv 2507.19849).

        Raises:
            ArlkitError: this episode has no turn k.
        """
        if not 0 <= k < self.traj.n_turns:
            raise ArlkitError(f"turn {k} does not exist: the trajectory has {self.traj.n_turns} turns")
        new = self._resume(k, self.traj.turns[k].start)
        new.traj.branch_pos = new.donor_len - 1
        return new

    def _resume(self, k: int, keep: int) -> Episode:
        """An episode at turn k's start (env, messages, text as they were), whose ids are this one's first
        `keep` ids: the turn's ids before `keep` become the partial turn."""
        t, ckpt = self.traj, self._checkpoints[k]
        start = t.turns[k].start
        new = copy.copy(self)
        new.env = _copy_env(self.env, ckpt.env)
        new.messages = [dict(m) for m in self.messages[: ckpt.n_messages]]
        new.text = self.text[: ckpt.n_text]
        new.traj = t.truncated(start)
        new.traj.metadata, new.traj.reward = self._initial_metadata(), 0.0
        new.partial = PartialTurn(t.token_ids[start:keep], t.logprobs[start:keep], t.entropies[start:keep])
        new.done = False
        new._checkpoints = self._checkpoints[: k + 1]
        new.donor, new.donor_len = self, keep
        return new


def _copy_env(env: Any, state: Any) -> Any:
    if state is None or not hasattr(env, "restore"):
        raise ArlkitError(
            f"{type(env).__name__} has no snapshot()/restore(): forking or branching an episode needs both"
        )
    new = copy.copy(env)
    new.restore(state)
    return new


def _strip_eos(text: str, eos: str) -> str:
    return text[: -len(eos)] if eos and text.endswith(eos) else text


SpawnFn = Callable[[Episode], list[Episode]]


@runtime_checkable
class EpisodeRunner(Protocol):
    def run(
        self, episodes: Sequence[Episode], params: RolloutParams, spawn: SpawnFn | None = None
    ) -> list[Episode]:
        """Drive `episodes` to completion. After each env step of a live episode, `spawn(ep)` may return new
        episodes (forks whose ids start with ep's), which are run too. Returns the given episodes, then the
        spawned ones in the order they were spawned."""
        ...


def sampling_params(params: RolloutParams, episode: Episode) -> SamplingParams:
    """One turn's sampling; the stop ids are the episode's (all episodes of a run share tokenizer and format)."""
    return SamplingParams(
        params.max_new_tokens, params.temperature, params.top_p, episode.stop_token_ids, episode.spans
    )


class TurnSyncRunner:
    """The runner for a stateless Generator: every turn, all live episodes generate together, each from its
    whole context (the generator prefills it again). Simple, and the reference the engine is tested against."""

    def __init__(self, generator: Generator):
        self.generator = generator

    def run(
        self, episodes: Sequence[Episode], params: RolloutParams, spawn: SpawnFn | None = None
    ) -> list[Episode]:
        out = list(episodes)
        live = [e for e in out if not e.done]
        while live:
            for ep in [e for e in live if e.turn_budget() <= 0]:
                ep.finish("context_length")  # a prompt that leaves no room to generate
            live = [e for e in live if not e.done]
            if not live:
                break
            gens = self.generator.generate([e.context_ids() for e in live], sampling_params(params, live[0]))
            turns = []
            for ep, g in zip(live, gens, strict=True):
                if g.version is not None:  # partial rollouts: each turn's tokens tagged with their version
                    ep.traj.metadata.setdefault("turn_versions", []).append(g.version)
                n = ep.turn_budget()
                reason = "length" if len(g.ids) > n else g.finish_reason
                turns.append((ep, g.ids[:n], g.logprobs[:n], g.entropies[:n], reason))
            advance_all(turns)
            nxt: list[Episode] = []
            for ep in live:
                if not ep.done:
                    forks = spawn(ep) if spawn is not None else []
                    nxt += [ep, *forks]
                    out += forks
            live = nxt
        return out


# env steps of one batch running at once: tool calls wait on I/O, sandboxes or sleeps, not on this process
# (1: one after another, as before; benchmarks/env_steps.py compares)
ENV_WORKERS = 16
_ENV_POOL: ThreadPoolExecutor | None = None


def advance_all(turns: Sequence[tuple[Episode, list[int], list[float], list[float] | None, str]]) -> None:
    """`Episode.advance` for several episodes whose turns ended together: ids and the tokenizer are handled
    here, in order; their env steps (tool calls) run concurrently on up to ENV_WORKERS threads, so one
    episode's slow tool does not hold the others back (a 300 ms search × 64 episodes was 19 s a turn, one
    after another). The result is the same as advancing them one by one: each env only sees its own action."""
    global _ENV_POOL
    if not all(isinstance(t[0], Episode) for t in turns):  # a runner's own turn objects (the gateway's)
        for ep, ids, lp, ent, reason in turns:
            ep.advance(ids, lp, ent, reason)
        return
    decoded = [ep.take_turn(ids, lp, ent, reason) for ep, ids, lp, ent, reason in turns]
    eps = [t[0] for t in turns]
    if len(turns) > 1 and ENV_WORKERS > 1:
        if _ENV_POOL is None or _ENV_POOL._max_workers != ENV_WORKERS:
            _ENV_POOL = ThreadPoolExecutor(ENV_WORKERS, thread_name_prefix="arlkit-env")
        steps = list(_ENV_POOL.map(lambda ed: ed[0].env_step(ed[1]), zip(eps, decoded, strict=True)))
    else:
        steps = [ep.env_step(d) for ep, d in zip(eps, decoded, strict=True)]
    for ep, step in zip(eps, steps, strict=True):
        ep.apply_step(step)


def _reset_env_pool() -> None:
    global _ENV_POOL
    _ENV_POOL = None  # a forked child has none of its parent's threads


os.register_at_fork(after_in_child=_reset_env_pool)


def as_runner(backend: Generator | EpisodeRunner) -> EpisodeRunner:
    return backend if isinstance(backend, EpisodeRunner) else TurnSyncRunner(backend)


def share_prompt_prefill(episodes: Sequence[Episode]) -> None:
    """Episodes with identical prompt ids (the n samples of a GRPO group) name the first of them as their
    donor, so a caching runner prefills the prompt once."""
    first: dict[tuple[int, ...], Episode] = {}
    for ep in episodes:
        key = tuple(ep.context_ids())
        if key in first and ep.donor is None:
            ep.donor, ep.donor_len = first[key], len(key)
        first.setdefault(key, ep)


def rollout_episodes(
    backend: Generator | EpisodeRunner,
    tokenizer: Any,
    make_env: Callable[[], Any],
    rows: Sequence[dict],
    group_ids: Sequence[int],
    params: RolloutParams,
) -> list[Episode]:
    """Run one episode per row with `backend`; returns the finished Episodes in the order of `rows` (they can
    still be branched: `Episode.branch`, `Episode.resume_turn`)."""
    episodes = [Episode(make_env(), tokenizer, r, g, params) for r, g in zip(rows, group_ids, strict=True)]
    share_prompt_prefill(episodes)
    as_runner(backend).run(episodes, params)
    return episodes


def rollout(
    backend: Generator | EpisodeRunner,
    tokenizer: Any,
    make_env: Callable[[], Any],
    rows: Sequence[dict],
    group_ids: Sequence[int],
    params: RolloutParams,
) -> list[Trajectory]:
    """Run one episode per row with `backend` (an EpisodeRunner, or a Generator run turn by turn).

    Returns finished Trajectories in the order of `rows`.
    """
    return [ep.traj for ep in rollout_episodes(backend, tokenizer, make_env, rows, group_ids, params)]
