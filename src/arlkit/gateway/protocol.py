"""The OpenAI chat-completions wire format the gateway speaks: the request body it accepts (validated, with
OpenAI-style errors) and the response and stream chunks it builds from generated choices.

Tool calls are parsed from the generated text with the task's action format (`<tool_call>{...}</tool_call>`
for Hermes, `<search>q</search>` for tags) and returned as OpenAI `tool_calls`; the text before the first call
is the message's content. Beside the standard fields, each choice carries vLLM's `token_ids` and the
response its `prompt_token_ids`, so clients that want ids get them.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from arlkit.envs.parsing import ActionFormat, ParsedAction

ROLES = ("system", "developer", "user", "assistant", "tool")
SESSION_HEADER = "x-session-id"


class GatewayError(Exception):
    """An error the client gets as OpenAI-style JSON with an HTTP status."""

    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param


MAX_N = 16


class ChatRequest(BaseModel):
    """A /v1/chat/completions body. Fields the gateway has no use for (seed, user, parallel_tool_calls,
    stream_options, ...) are accepted and ignored, as agents' frameworks send many of them."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=0)  # only the sampled token's logprob is recorded

    @field_validator("messages")
    @classmethod
    def _roles(cls, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, m in enumerate(messages):
            if m.get("role") not in ROLES:
                raise ValueError(
                    f"messages[{i}].role must be one of {', '.join(ROLES)}, got {m.get('role')!r}"
                )
        return messages

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice(cls, value: str | dict | None) -> str | dict | None:
        if isinstance(value, str) and value not in ("none", "auto", "required"):
            raise ValueError(f"tool_choice must be 'none', 'auto', 'required' or a function, got {value!r}")
        return value

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def apply_stop(raw: str, stops: list[str]) -> str:
    """`raw` cut before the first stop string (OpenAI leaves the stop out)."""
    cut = min((i for i in (raw.find(s) for s in stops if s) if i >= 0), default=-1)
    return raw[:cut] if cut >= 0 else raw


def parse_message(
    text: str, fmt: ActionFormat, tools_allowed: bool, call_prefix: str
) -> tuple[str | None, list[dict]]:
    """(content, tool_calls) of a generated text. Malformed calls stay in the content: the agent sees them."""
    parsed: ParsedAction = fmt.parse(text) if tools_allowed else ParsedAction((), (), None)
    if not parsed.calls:
        return text, []
    opens = [f"<{n}>" for n in getattr(fmt, "tool_names", ())] or [fmt.call_open]
    first = min((i for i in (text.find(o) for o in opens) if i >= 0), default=len(text))
    calls = [
        {
            "id": f"call_{call_prefix}_{k}",
            "type": "function",
            "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)},
        }
        for k, c in enumerate(parsed.calls)
    ]
    content = text[:first].strip()
    return content or None, calls


def new_id() -> str:
    return f"chatcmpl-{secrets.token_hex(12)}"


def choice_body(
    index: int,
    content: str | None,
    tool_calls: list[dict],
    finish_reason: str,
    token_ids: list[int],
    logprobs: list[dict] | None,
) -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "index": index,
        "message": message,
        "finish_reason": finish_reason,
        "logprobs": {"content": logprobs} if logprobs is not None else None,
        "token_ids": token_ids,
    }


def completion_body(rid: str, model: str, choices: list[dict], prompt_ids: list[int]) -> dict:
    n_out = sum(len(c["token_ids"]) for c in choices)
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": {
            "prompt_tokens": len(prompt_ids),
            "completion_tokens": n_out,
            "total_tokens": len(prompt_ids) + n_out,
        },
        "prompt_token_ids": prompt_ids,
    }


def stream_chunks(body: dict) -> list[dict]:
    """A finished completion as the chunks a streaming client reads: per choice, the role, the content, the
    tool calls and the finish reason (the gateway generates a turn whole, then streams it)."""
    base = {
        "id": body["id"],
        "object": "chat.completion.chunk",
        "created": body["created"],
        "model": body["model"],
    }
    out = []
    for c in body["choices"]:
        m, i = c["message"], c["index"]
        out.append({**base, "choices": [{"index": i, "delta": {"role": "assistant"}, "finish_reason": None}]})
        if m.get("content"):
            delta = {"content": m["content"]}
            out.append({**base, "choices": [{"index": i, "delta": delta, "finish_reason": None}]})
        if m.get("tool_calls"):
            calls = [{"index": k, **tc} for k, tc in enumerate(m["tool_calls"])]
            out.append(
                {**base, "choices": [{"index": i, "delta": {"tool_calls": calls}, "finish_reason": None}]}
            )
        out.append({**base, "choices": [{"index": i, "delta": {}, "finish_reason": c["finish_reason"]}]})
    out.append({**base, "choices": [], "usage": body["usage"]})
    return out
