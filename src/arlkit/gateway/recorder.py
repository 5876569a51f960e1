"""What an agent's requests become: the Trajectories of its episode, one per segment.

Each request's messages are rendered with the policy's chat template. An assistant message that the gateway
itself returned is rendered as the text the model generated (looked up by its tool-call ids, or by its
content), so the history the agent sends back renders to exactly the ids already recorded. While a request's
rendered text extends the segment's text (prompt + generations + observations so far), only the new suffix is
tokenised and appended as an observation: the episode stays one Trajectory, exact as the built-in path. When
it does not (the agent rewrote, summarised or truncated its history, or the template dropped earlier
`<think>` blocks), the episode grows a new segment whose prompt is the whole new rendering. Generated ids are
never re-tokenised either way.

Text only, no server: server.py feeds it; agents.py turns closed sessions into training rows.
"""

from __future__ import annotations

import copy
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from arlkit.rollout.chat import ChatFormatter
from arlkit.rollout.generator import Generation
from arlkit.rollout.spans import SpanScanner
from arlkit.trajectory import Role, Trajectory


@dataclass
class Segment:
    """One flat sequence of an episode and the rendered text its ids stand for."""

    traj: Trajectory
    text: str
    n_messages: int = 0  # messages of the last request it rendered


@dataclass
class Choice:
    """One generated choice as the client sees it, and what the session keeps of it."""

    gen: Generation
    raw: str  # the decoded generated text, EOS removed: what the assistant message renders as
    segment: Segment


@dataclass
class Session:
    """The records of one episode. `tips` are the segments a next request may extend: one, or a request's `n`
    choices until the agent picks one by sending it back."""

    group_id: int
    row: dict
    tokenizer: Any
    spans: SpanScanner
    id: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    finished: list[Segment] = field(default_factory=list)
    tips: list[Segment] = field(default_factory=list)
    raw_by_call: dict[str, str] = field(default_factory=dict)  # tool-call id we issued -> raw text
    raw_by_content: dict[str, str] = field(default_factory=dict)  # content we returned -> raw text
    closed: bool = False
    reward: float | None = None  # set by the agent's return value or the reward endpoint
    metrics: dict[str, float] = field(default_factory=dict)
    discarded_choices: int = 0  # choices of n > 1 the agent did not continue
    requests: int = 0
    tool_calls: int = 0  # OpenAI tool_calls returned (of the choices the agent continued or not)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # server and trainer threads

    def context(
        self, messages: Sequence[dict], tools: Sequence[dict] | None, max_length: int
    ) -> tuple[Segment | None, list[int]]:
        """The segment this request continues, extended by the request's new messages, or a new segment;
        and the ids to generate from. (None, ids) and no change when the ids leave no room to generate."""
        chat = ChatFormatter(self.tokenizer, tools)
        text = chat.render([self._as_rendered(m) for m in messages], add_generation_prompt=True)
        match = max(
            (s for s in self.tips if text.startswith(s.text)), key=lambda s: len(s.text), default=None
        )
        new_ids = chat.encode(text if match is None else text[len(match.text) :])
        ids = new_ids if match is None else match.traj.token_ids + new_ids
        if len(ids) >= max_length:
            return None, ids
        if match is None:  # a new segment: the history was not extended but rewritten
            if self.tips:
                self.finished.append(self.tips[0])
                self.discarded_choices += len(self.tips) - 1
            traj = Trajectory(group_id=self.group_id, metadata=self._metadata())
            traj.extend_context(new_ids, Role.PROMPT)
            seg = Segment(traj, text, len(messages))
        else:
            self.discarded_choices += len(self.tips) - 1
            seg = match
            new = [
                _text(m.get("content")) for m in messages[seg.n_messages :] if m.get("role") != "assistant"
            ]
            seg.traj.add_observation(new_ids, new)
            seg.text, seg.n_messages = text, len(messages)
        self.tips = []
        self.requests += 1
        return seg, list(seg.traj.token_ids)

    def record(self, seg: Segment, gens: Sequence[Generation]) -> list[Choice]:
        """Append each generated choice to (a copy of) `seg`; they become the tips."""
        choices = []
        for k, g in enumerate(gens):
            s = seg if k == len(gens) - 1 else Segment(copy.deepcopy(seg.traj), seg.text, seg.n_messages)
            s.traj.add_turn(g.ids, self.spans.roles(g.ids), g.logprobs, g.entropies, g.finish_reason)
            decoded = self.tokenizer.decode(g.ids, skip_special_tokens=False)
            s.text += decoded
            eos = self.tokenizer.eos_token or ""
            raw = decoded[: -len(eos)] if eos and decoded.endswith(eos) else decoded
            choices.append(Choice(g, raw, s))
            self.tips.append(s)
        return choices

    def remember(self, raw: str, content: str | None, call_ids: Sequence[str]) -> None:
        """What the client was sent for a choice, so the message it sends back renders as `raw`."""
        for cid in call_ids:
            self.raw_by_call[cid] = raw
        if not call_ids and content is not None:
            self.raw_by_content[content] = raw

    def segments(self) -> list[Trajectory]:
        """The episode's segments in order (the first tip stands for the last)."""
        return [s.traj for s in [*self.finished, *self.tips[:1]]]

    def _as_rendered(self, m: dict) -> dict:
        m = {**m, "content": _text(m.get("content"))}
        if m.get("role") != "assistant":
            return m
        ids = [tc.get("id") for tc in m.get("tool_calls") or [] if isinstance(tc, dict)]
        raw = next((self.raw_by_call[i] for i in ids if i in self.raw_by_call), None)
        if raw is None and not ids:
            raw = self.raw_by_content.get(m["content"])
        return m if raw is None else {"role": "assistant", "content": raw}

    def _metadata(self) -> dict:
        return {"id": self.row.get("id"), "question": self.row.get("question"), "session": self.id}


def _text(content: Any) -> str:
    """OpenAI message content as text: a string, None, or a list of parts of which the text ones count."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
