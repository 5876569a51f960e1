"""SFT on your own conversations: OpenAI-format chats (assistant `tool_calls`, `tool` messages) as training
rows, rendered by the same chat-template code as RL.

Each conversation is replayed through the gateway's recorder (gateway/recorder.py), as if an agent had sent
it turn by turn: every assistant message becomes a generated turn (its ids are the tokenisation of the text the
template renders for it, cut where a rollout's turn would stop: after the last closing tool-call delimiter,
or after the end-of-turn token), and what the template renders between turns becomes observation ids. So
demonstrations carry exactly the ids, roles and glue rollouts have, loss falls on generated roles only, and a
conversation a template does not render append-only (earlier `<think>` blocks dropped) becomes several
segments, as it would in RL.

A file is JSONL, one `{"messages": [...], "tools": [...]}` per line (`tools` optional), or anything
`datasets` loads with such columns (`.json`, `.parquet`, a `save_to_disk` folder).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from arlkit.errors import ArlkitError
from arlkit.gateway.recorder import Session
from arlkit.rollout.chat import ChatFormatter
from arlkit.rollout.generator import Generation
from arlkit.rollout.spans import SpanScanner
from arlkit.trajectory import Trajectory


def load_conversations(path: str | Path) -> list[dict]:
    """The conversations of a JSONL file, or of a file or folder `datasets` loads.

    Raises:
        ArlkitError: a missing file, a line that is not JSON, or a row without a list of messages.
    """
    p = Path(path)
    if not p.exists():
        raise ArlkitError(f"config field 'sft.data': {path} does not exist")
    if p.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(p.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as e:
                    raise ArlkitError(f"sft.data {path}, line {n}: not JSON ({e})") from None
    else:
        try:
            import datasets
        except ImportError:
            raise ArlkitError(
                "sft.data other than .jsonl needs `datasets`: pip install 'arlkit[datasets]'"
            ) from None
        ds = (
            datasets.load_from_disk(str(p))
            if p.is_dir()
            else datasets.load_dataset(p.suffix[1:], data_files=str(p))["train"]
        )
        rows = [dict(r) for r in ds]
    for n, r in enumerate(rows, 1):
        if not isinstance(r.get("messages"), list) or not r["messages"]:
            raise ArlkitError(f"sft.data {path}, conversation {n}: needs a non-empty list 'messages'")
    return rows


def conversation_trajectories(
    conversations: Sequence[dict], tokenizer: Any, spans: SpanScanner, max_length: int
) -> list[Trajectory]:
    """The training rows of `conversations` (one per segment; see the module docstring).

    Raises:
        ArlkitError: a conversation without an assistant message, a template that does not render an
            assistant message after its generation prompt, or one longer than `max_length`.
    """
    out = []
    for n, conv in enumerate(conversations, 1):
        messages, tools = conv["messages"], conv.get("tools")
        turns = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
        if not turns:
            raise ArlkitError(f"conversation {n} has no assistant message to learn from")
        session = Session(0, {"id": conv.get("id", n)}, tokenizer, spans)
        chat = ChatFormatter(tokenizer, tools)
        for i in turns:
            seg, _ = session.context(messages[:i], tools, max_length)
            if seg is None:
                raise ArlkitError(f"conversation {n} is longer than {max_length} tokens (rollout.max_length)")
            text = _assistant_text(chat, messages[: i + 1], seg.text, n, tokenizer.eos_token, spans)
            gen = tokenizer.encode(text, add_special_tokens=False)
            nan = [math.nan] * len(gen)
            session.record(seg, [Generation(gen, nan, nan, "stop")])
        for k, t in enumerate(segments := session.segments()):
            t.metadata.update({"conversation": n, "segment": k, "n_segments": len(segments)})
        out += segments
    return out


def _assistant_text(
    chat: ChatFormatter, messages: Sequence[dict], context: str, n: int, eos: str, spans: SpanScanner
) -> str:
    """What the template renders for the last message (an assistant's) after `context`, cut where a rollout's
    turn stops: after the last closing tool-call delimiter when it calls tools, else after the end of turn."""
    full = chat.render(messages, add_generation_prompt=False)
    if not full.startswith(context):
        raise ArlkitError(
            f"conversation {n}: the chat template does not render an assistant message after its generation "
            "prompt (not prefix-preserving); use a template that does"
        )
    text = full[len(context) :]
    close = spans.tags.call_close
    if messages[-1].get("tool_calls") and close in text:
        return text[: text.rindex(close) + len(close)]
    if eos and eos in text:
        return text[: text.index(eos) + len(eos)]
    return text
