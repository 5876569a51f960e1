"""The central data structure: one episode as flat, token-aligned arrays (DESIGN.md).

Everything downstream (loss mask, advantage mask, per-turn credit, viewers) is derived from `roles` and
`turn`, never from re-parsing text. Roles follow METHODS.md §1.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Any

import torch


class Role(IntEnum):
    """Role of a token (METHODS.md §1)."""

    PROMPT = 0
    REASONING = 1
    ACTION = 2
    OBSERVATION = 3
    ANSWER = 4


GENERATED_ROLES = (Role.REASONING, Role.ACTION, Role.ANSWER)
PAD_ROLE = -1


@dataclass(frozen=True)
class TurnRecord:
    """One assistant turn: where its generated span lies, the tool calls it made and its step reward.

    The step (process) reward belongs to the last generated token of the turn, `end - 1` (Agent-R1).
    """

    start: int
    end: int
    calls: tuple[Any, ...] = ()
    reward: float = 0.0
    finish_reason: str = ""
    # the env's observation messages after this turn, as the tools wrote them (for viewers: the ids hold them
    # inside the chat template's role markers and tags)
    observation: tuple[str, ...] = ()


@dataclass
class Trajectory:
    """One episode of one prompt. All per-token lists have the same length L."""

    token_ids: list[int] = field(default_factory=list)
    roles: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)  # at generation; NaN where not generated
    entropies: list[float] = field(default_factory=list)  # at generation; NaN where not generated
    turn: list[int] = field(default_factory=list)  # prompt: 0; turn k and the observation after it: k
    turns: list[TurnRecord] = field(default_factory=list)
    reward: float = 0.0  # final (outcome) reward
    group_id: int = 0  # prompt id: the n rollouts of one prompt share it
    parent: int | None = None  # for branched rollouts (APPO/ARPO): the parent's index in its batch
    branch_pos: int | None = None  # position of the last token shared with the parent (c_≤branch_pos)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def n_turns(self) -> int:
        return len(self.turns)

    def extend_context(self, ids: Sequence[int], role: Role) -> None:
        """Append ids the model did not generate (prompt or observation)."""
        k = max(len(self.turns) - 1, 0)
        self.token_ids.extend(ids)
        self.roles.extend([int(role)] * len(ids))
        self.logprobs.extend([math.nan] * len(ids))
        self.entropies.extend([math.nan] * len(ids))
        self.turn.extend([k] * len(ids))

    def add_observation(self, ids: Sequence[int], messages: Sequence[str]) -> None:
        """Append an observation's ids (the template's rendering of the env's messages) and keep the messages'
        own text on the last turn."""
        self.extend_context(ids, Role.OBSERVATION)
        if self.turns:
            self.turns[-1] = replace(self.turns[-1], observation=tuple(messages))

    def add_turn(
        self,
        ids: Sequence[int],
        roles: Sequence[Role],
        logprobs: Sequence[float],
        entropies: Sequence[float] | None = None,
        finish_reason: str = "",
    ) -> None:
        """Append one turn's generated ids exactly as generated (never re-tokenised)."""
        if not (len(ids) == len(roles) == len(logprobs)) or (
            entropies is not None and len(entropies) != len(ids)
        ):
            raise ValueError("ids, roles, logprobs and entropies of a turn must have the same length")
        k, start = len(self.turns), len(self.token_ids)
        self.token_ids.extend(ids)
        self.roles.extend(int(r) for r in roles)
        self.logprobs.extend(float(x) for x in logprobs)
        self.entropies.extend([math.nan] * len(ids) if entropies is None else [float(x) for x in entropies])
        self.turn.extend([k] * len(ids))
        self.turns.append(TurnRecord(start=start, end=len(self.token_ids), finish_reason=finish_reason))

    def set_turn_outcome(self, calls: Sequence[Any], reward: float) -> None:
        """Record the tool calls and step reward of the last turn."""
        last = self.turns[-1]
        self.turns[-1] = replace(last, calls=tuple(calls), reward=float(reward))

    def truncated(self, length: int) -> Trajectory:
        """A copy of the first `length` tokens and of the turns that end within them (a branch's prefix).

        The final reward is not copied: it belongs to the whole episode.
        """
        return Trajectory(
            token_ids=self.token_ids[:length],
            roles=self.roles[:length],
            logprobs=self.logprobs[:length],
            entropies=self.entropies[:length],
            turn=self.turn[:length],
            turns=[t for t in self.turns if t.end <= length],
            group_id=self.group_id,
            parent=self.parent,
            branch_pos=self.branch_pos,
            metadata=copy.deepcopy(self.metadata),
        )

    @property
    def total_reward(self) -> float:
        """Episode return: the final reward plus every step (process) reward."""
        return self.reward + sum(rec.reward for rec in self.turns)

    @property
    def overlong(self) -> bool:
        """The episode was cut by a length limit: its context budget, or a turn that hit max_new_tokens."""
        cut_turn = bool(self.turns) and self.turns[-1].finish_reason == "length"
        return self.metadata.get("finish_reason") == "context_length" or cut_turn

    @property
    def tool_calls(self) -> tuple[int, int]:
        """(calls, successful calls) over the episode; a malformed call counts as a failed one."""
        calls = [c for rec in self.turns for c in rec.calls]
        return len(calls), sum(1 for c in calls if getattr(c, "ok", False))

    @property
    def n_generated(self) -> int:
        return sum(1 for r in self.roles if r in GENERATED_ROLES)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (NaN logprobs and entropies become None)."""
        return {
            "group_id": self.group_id,
            "reward": self.reward,
            "token_ids": self.token_ids,
            "roles": self.roles,
            "turn": self.turn,
            "logprobs": json_floats(self.logprobs),
            "entropies": json_floats(self.entropies),
            "turns": [
                {
                    "start": t.start,
                    "end": t.end,
                    "reward": t.reward,
                    "finish_reason": t.finish_reason,
                    "calls": [getattr(c, "__dict__", c) for c in t.calls],
                    "observation": list(t.observation),
                }
                for t in self.turns
            ],
            "parent": self.parent,
            "branch_pos": self.branch_pos,
            "metadata": self.metadata,
        }


def json_floats(values: Sequence[float]) -> list[float | None]:
    """Rounded to 5 decimals (samples files stay small); NaN and inf become None (JSON has neither)."""
    return [round(x, 5) if math.isfinite(x) else None for x in values]


@dataclass
class Batch:
    """Trajectories collated into right-padded tensors. B trajectories, T = longest length.

    `loss_mask` is 1 exactly on generated tokens (REASONING, ACTION, ANSWER) and 0 on prompt, observation
    and padding; it is derived from roles only. Per-token tensors are aligned to tokens: entry t describes
    token t (its logprob is that of predicting it from c_<t).
    """

    input_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor  # (B, T) long, 1 = real token
    roles: torch.Tensor  # (B, T) long, PAD_ROLE on padding
    turn: torch.Tensor  # (B, T) long
    loss_mask: torch.Tensor  # (B, T) float
    rollout_logprobs: torch.Tensor  # (B, T) float, 0 where not generated
    token_rewards: (
        torch.Tensor
    )  # (B, T) float: step rewards on each turn's last token, final reward on the last
    group_index: torch.Tensor  # (B,) long

    @property
    def scores(self) -> torch.Tensor:
        """(B,) episode return: final plus step rewards."""
        return self.token_rewards.sum(-1)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(**{k: v.to(device) for k, v in self.__dict__.items()})

    def select(self, index: torch.Tensor) -> Batch:
        """Rows `index` (a mini-batch), trimmed to their longest length."""
        rows = {k: v[index] for k, v in self.__dict__.items()}
        width = int(rows["attention_mask"].sum(-1).max())
        return Batch(**{k: (v[:, :width] if v.dim() == 2 else v) for k, v in rows.items()})


def loss_mask_from_roles(roles: torch.Tensor) -> torch.Tensor:
    """1.0 where the role is generated (REASONING, ACTION, ANSWER), else 0.0. roles: (B, T) long."""
    mask = torch.zeros(roles.shape, dtype=torch.float32)
    for r in GENERATED_ROLES:
        mask = mask + (roles == int(r)).float()
    return mask


def role_mask(roles: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
    """(B, T) float: 1 where the token's role is one of `names` ("reasoning", "action", "answer", ...)."""
    mask = torch.zeros(roles.shape, dtype=torch.float32)
    for name in names:
        mask = mask + (roles == int(Role[name.upper()])).float()
    return mask


def _token_rewards(traj: Trajectory) -> list[float]:
    rewards = [0.0] * len(traj)
    for rec in traj.turns:
        if rec.end > rec.start:
            rewards[rec.end - 1] += rec.reward
    gen = [i for i, r in enumerate(traj.roles) if r in GENERATED_ROLES]
    if gen:
        rewards[gen[-1]] += traj.reward
    return rewards


def collate(trajs: Sequence[Trajectory], pad_id: int) -> Batch:
    """Right-pad trajectories into a Batch; group ids become dense indices 0..n_groups-1."""
    if not trajs:
        raise ValueError("collate needs at least one trajectory")
    width = max(len(t) for t in trajs)
    n = len(trajs)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    attn = torch.zeros((n, width), dtype=torch.long)
    roles = torch.full((n, width), PAD_ROLE, dtype=torch.long)
    turn = torch.zeros((n, width), dtype=torch.long)
    logp = torch.zeros((n, width), dtype=torch.float32)
    rew = torch.zeros((n, width), dtype=torch.float32)
    for i, t in enumerate(trajs):
        L = len(t)
        ids[i, :L] = torch.tensor(t.token_ids, dtype=torch.long)
        attn[i, :L] = 1
        roles[i, :L] = torch.tensor(t.roles, dtype=torch.long)
        turn[i, :L] = torch.tensor(t.turn, dtype=torch.long)
        logp[i, :L] = torch.nan_to_num(torch.tensor(t.logprobs, dtype=torch.float32), nan=0.0)
        rew[i, :L] = torch.tensor(_token_rewards(t), dtype=torch.float32)
    dense = {g: j for j, g in enumerate(dict.fromkeys(t.group_id for t in trajs))}
    groups = torch.tensor([dense[t.group_id] for t in trajs], dtype=torch.long)
    return Batch(ids, attn, roles, turn, loss_mask_from_roles(roles), logp, rew, groups)
