"""The multi-turn rollout engine: generate → decode → env.step → append observation ids, until done.

All active episodes of a batch generate together, one turn at a time. The generated ids go to the
Trajectory exactly as sampled; only their decoded text goes to the environment (token-in/token-out).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from arlkit.errors import ArlkitError
from arlkit.rollout.chat import ChatFormatter
from arlkit.rollout.generator import Generator, SamplingParams
from arlkit.trajectory import Role, Trajectory, generated_roles


@dataclass(frozen=True)
class RolloutParams:
    """Limits and sampling of one rollout batch."""

    max_turns: int = 4
    max_new_tokens: int = 64  # per turn
    max_length: int = 1024  # whole episode, prompt included
    temperature: float = 1.0
    top_p: float = 1.0


class Episode:
    """One episode in progress: its env, conversation, decoded context text and Trajectory.

    `advance` takes one turn's generated ids, whoever produced them (the generator in RL, a script for SFT
    demonstrations), so demonstrations and rollouts are tokenised by the same code.
    """

    def __init__(self, env: Any, tokenizer: Any, row: dict, group_id: int, params: RolloutParams):
        self.env, self.tokenizer, self.row, self.params = env, tokenizer, row, params
        self.messages: list[dict] = list(env.reset(row))
        self.chat = ChatFormatter(tokenizer, env.prompt_tools)
        self.delims = self.chat.delimiters(env.fmt.call_open, env.fmt.call_close)
        seg = self.chat.prompt(self.messages)
        if len(seg.ids) >= params.max_length:  # nothing could be generated; the episode would be noise
            raise ArlkitError(
                f"the prompt of row {row.get('id', '?')!r} has {len(seg.ids)} tokens but the episode limit "
                f"rollout.max_length is {params.max_length}; raise rollout.max_length"
            )
        self.text = seg.text  # decoded context: what the template renders for `messages` so far
        self.traj = Trajectory(
            group_id=group_id, metadata={"id": row.get("id"), "question": row.get("question")}
        )
        self.traj.extend_context(seg.ids, Role.PROMPT)
        self.done = False

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        return (self.tokenizer.eos_token_id, *self.delims.call_close[-1:])

    def advance(
        self,
        ids: list[int],
        logprobs: list[float] | None = None,
        entropies: list[float] | None = None,
        finish_reason: str = "stop",
    ) -> None:
        """Append one turn's generated ids, step the env, and append its observation (or finish)."""
        budget = self.params.max_length - len(self.traj)
        if len(ids) > budget:
            ids, finish_reason = ids[:budget], "length"
        logprobs = list(logprobs[: len(ids)]) if logprobs is not None else [math.nan] * len(ids)
        entropies = list(entropies[: len(ids)]) if entropies is not None else None
        self.traj.add_turn(ids, generated_roles(ids, self.delims), logprobs, entropies, finish_reason)
        decoded = self.tokenizer.decode(ids, skip_special_tokens=False)
        self.text += decoded
        self.messages.append({"role": "assistant", "content": _strip_eos(decoded, self.tokenizer.eos_token)})
        step = self.env.step(decoded)
        self.traj.set_turn_outcome(step.calls, step.reward)
        if step.done:
            self.finish(step.finish_reason or "done")
            return
        self.messages.extend(step.observations)
        seg = self.chat.continuation(self.text, self.messages)
        if len(self.traj) + len(seg.ids) + 1 > self.params.max_length:
            self.finish("context_length")  # no room left to generate after this observation
            return
        self.traj.extend_context(seg.ids, Role.OBSERVATION)
        self.text += seg.text

    def finish(self, reason: str) -> None:
        result = self.env.result()
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


def _strip_eos(text: str, eos: str) -> str:
    return text[: -len(eos)] if eos and text.endswith(eos) else text


def rollout(
    generator: Generator,
    tokenizer: Any,
    make_env: Callable[[], Any],
    rows: Sequence[dict],
    group_ids: Sequence[int],
    params: RolloutParams,
) -> list[Trajectory]:
    """Run one episode per row, all active episodes generating together one turn at a time.

    Returns finished Trajectories in the order of `rows`.
    """
    episodes = [Episode(make_env(), tokenizer, r, g, params) for r, g in zip(rows, group_ids, strict=True)]
    if not episodes:
        return []
    sampling = SamplingParams(
        params.max_new_tokens, params.temperature, params.top_p, episodes[0].stop_token_ids
    )
    for _ in range(params.max_turns):
        active = [e for e in episodes if not e.done]
        if not active:
            break
        gens = generator.generate([e.traj.token_ids for e in active], sampling)
        for ep, gen in zip(active, gens, strict=True):
            ep.advance(gen.ids, gen.logprobs, gen.entropies, gen.finish_reason)
    for ep in episodes:
        if not ep.done:  # the turn budget ran out on a generation that did not end the episode
            ep.finish("max_turns")
    return [ep.traj for ep in episodes]
