"""The OpenAI-compatible gateway: an HTTP server (FastAPI on uvicorn, bound to 127.0.0.1 on a free port) in
front of the rollout backend, recording every request of every episode (recorder.py).

Routes: `/v1/models` and `/v1/chat/completions`, under a per-episode base URL `/s/<session>/v1` (what
arlkit hands each agent) or under `/v1` with an `X-Session-Id` header; `POST .../reward` (`{"reward": r,
"metrics": {...}}`) for agents that report their reward instead of returning it. Session ids are random
(128 bits): an episode cannot address another's records. Requests of one session are served in order.

The run's sampling applies, not the request's: the trainer recomputes logprobs at `rollout.temperature`, so
a request's own temperature or top_p would make its tokens off-policy. A request's `max_tokens` can only
lower the turn's limit (`rollout.max_new_tokens`). `tool_choice: "none"` returns text only; "required" or a
named function are accepted but not enforced (no constrained decoding).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from arlkit.envs.parsing import ActionFormat
from arlkit.errors import ArlkitError
from arlkit.gateway.protocol import (
    ChatRequest,
    GatewayError,
    apply_stop,
    choice_body,
    completion_body,
    new_id,
    parse_message,
)
from arlkit.gateway.recorder import Session
from arlkit.gateway.service import GenerationService, Sampling
from arlkit.rollout.generator import Generation
from arlkit.rollout.spans import SpanScanner


@dataclass
class GatewayStats:
    requests: int = 0
    errors: int = 0
    rejected_closed: int = 0  # requests to a session whose episode had ended (409)


class Gateway:
    """Serves the policy to agents and records their episodes. `sampling`: the run's sampling (see the module
    docstring); change it between rollouts with `set_sampling` (training vs evaluation temperature)."""

    def __init__(
        self,
        service: GenerationService,
        tokenizer: Any,
        fmt: ActionFormat,
        spans: SpanScanner,
        sampling: Sampling,
        model_name: str = "arlkit-policy",
        api_key: str | None = None,
    ):
        self.service, self.tokenizer, self.fmt, self.spans = service, tokenizer, fmt, spans
        self.sampling, self.model_name, self.api_key = sampling, model_name, api_key
        self.sessions: dict[str, Session] = {}
        self._closed: set[str] = set()
        self._session_locks: dict[str, asyncio.Lock] = {}
        self._lock = threading.Lock()
        self.stats = GatewayStats()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # --- lifecycle ---------------------------------------------------------------------------------------
    def start(self, host: str = "127.0.0.1", port: int = 0, start_timeout_s: float = 30.0) -> Gateway:
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            raise ArlkitError(f"the gateway cannot listen on {host}:{port}: {e}") from None
        self.host, self.port = host, sock.getsockname()[1]
        config = uvicorn.Config(self.app(), log_level="warning", access_log=False, timeout_keep_alive=30)
        self._server = uvicorn.Server(config)
        self.service.start()
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="arlkit-gateway", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + start_timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ArlkitError(f"the gateway did not start on {host}:{self.port}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            self._server = None
        self.service.stop()

    def __enter__(self) -> Gateway:
        return self if self._server is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def session_url(self, session_id: str) -> str:
        return f"http://{self.host}:{self.port}/s/{session_id}/v1"

    def set_sampling(self, **changes: Any) -> None:
        self.sampling = replace(self.sampling, **changes)

    # --- sessions ----------------------------------------------------------------------------------------
    def open_session(self, group_id: int, row: dict) -> Session:
        s = Session(group_id, row, self.tokenizer, self.spans)
        with self._lock:
            self.sessions[s.id] = s
        return s

    def close_session(self, session_id: str) -> Session:
        """End an episode: later requests get 409; its records are final (a request generating now is
        dropped). The session is forgotten."""
        with self._lock:
            s = self.sessions.pop(session_id)
            self._closed.add(session_id)
        self._session_locks.pop(session_id, None)
        with s.lock:
            s.closed = True
        return s

    def _session(self, session_id: str | None) -> Session:
        if not session_id:
            raise GatewayError(
                400, "no session: use the per-episode base_url (/s/<session>/v1) or the X-Session-Id header"
            )
        with self._lock:
            s, closed = self.sessions.get(session_id), session_id in self._closed
        if closed:
            self.stats.rejected_closed += 1
            raise GatewayError(409, f"session {session_id!r} is closed: its episode has ended", "conflict")
        if s is None:
            raise GatewayError(404, f"no session {session_id!r}", "not_found_error")
        return s

    # --- requests ----------------------------------------------------------------------------------------
    async def chat(self, session_id: str | None, req: ChatRequest) -> dict:
        s = self._session(session_id)
        lock = self._session_locks.setdefault(s.id, asyncio.Lock())
        async with lock:  # one request of a session at a time: each continues the one before
            self.stats.requests += 1
            sampling = self.sampling
            limit = req.max_completion_tokens or req.max_tokens
            if limit is not None:
                sampling = replace(sampling, max_new_tokens=min(limit, sampling.max_new_tokens))
            with s.lock:
                if s.closed:
                    raise GatewayError(409, f"session {s.id!r} is closed: its episode has ended", "conflict")
                seg, ids = s.context(req.messages, req.tools, self.service.max_length)
            if seg is None:
                raise GatewayError(
                    400,
                    f"the conversation has {len(ids)} tokens, the episode limit is {self.service.max_length} "
                    "(rollout.max_length)",
                    param="messages",
                )
            gens = await asyncio.wrap_future(self.service.submit(ids, req.n, sampling))
            gens = [self._cut_at_stop(g, req.stops) for g in gens]
            with s.lock:
                if s.closed:
                    self.stats.rejected_closed += 1
                    raise GatewayError(
                        409, f"session {s.id!r} closed while its request was generating", "conflict"
                    )
                choices = s.record(seg, gens)
                rid = new_id()
                bodies = []
                for k, c in enumerate(choices):
                    text = apply_stop(c.raw, req.stops)
                    content, calls = parse_message(text, self.fmt, req.tool_choice != "none", f"{rid[9:]}{k}")
                    s.remember(c.raw, content, [tc["id"] for tc in calls])
                    s.tool_calls += len(calls)
                    reason = (
                        "tool_calls" if calls else "length" if c.gen.finish_reason == "length" else "stop"
                    )
                    lps = self._logprobs(c.gen) if req.logprobs else None
                    bodies.append(choice_body(k, content, calls, reason, c.gen.ids, lps))
            return completion_body(rid, req.model, bodies, ids)

    def _cut_at_stop(self, g: Generation, stops: Sequence[str]) -> Generation:
        """The generation up to the id that completes a stop string (ids after it were sampled but are not
        part of the turn the client sees, so they are not trained)."""
        if not stops:
            return g
        text = ""
        for k, i in enumerate(g.ids):
            text += self.spans.piece(i)
            if any(s and s in text for s in stops):
                return Generation(g.ids[: k + 1], g.logprobs[: k + 1], g.entropies[: k + 1], "stop")
        return g

    def _logprobs(self, g: Generation) -> list[dict]:
        out = []
        for i, lp in zip(g.ids, g.logprobs, strict=True):
            piece = self.spans.piece(i)
            out.append({"token": piece, "logprob": lp, "bytes": list(piece.encode()), "top_logprobs": []})
        return out

    def record_reward(self, session_id: str | None, body: Any) -> dict:
        s = self._session(session_id)
        if not isinstance(body, dict) or not isinstance(body.get("reward"), (int, float)):
            raise GatewayError(400, 'the body must be {"reward": <number>, "metrics": {...}}', param="reward")
        metrics = body.get("metrics") or {}
        if not isinstance(metrics, dict) or not all(isinstance(v, (int, float)) for v in metrics.values()):
            raise GatewayError(400, "metrics must map names to numbers", param="metrics")
        with s.lock:
            s.reward, s.metrics = float(body["reward"]), {k: float(v) for k, v in metrics.items()}
        return {"ok": True}

    def app(self) -> Any:
        from arlkit.gateway.app import build_app  # fastapi only when a gateway starts

        return build_app(self)
