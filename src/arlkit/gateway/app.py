"""The gateway's HTTP routes (FastAPI), over a Gateway (server.py) that does the work.

No `from __future__ import annotations` here: FastAPI reads the route functions' annotations at runtime.
"""

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from arlkit.gateway.protocol import SESSION_HEADER, ChatRequest, GatewayError, error_body, stream_chunks


def build_app(gw: Any) -> FastAPI:
    """The routes over `gw`, a server.Gateway (not imported: server.py builds this app)."""
    app = FastAPI(title="arlkit gateway", docs_url=None, redoc_url=None, openapi_url=None)

    def fail(e: GatewayError) -> JSONResponse:
        gw.stats.errors += 1
        return JSONResponse(error_body(e.message, e.kind, e.param), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return fail(GatewayError(400, str(exc)))

    @app.exception_handler(404)
    async def _not_found(request: Request, exc: Exception) -> JSONResponse:
        return fail(GatewayError(404, f"no route {request.method} {request.url.path}", "not_found_error"))

    def authorised(request: Request) -> bool:
        return gw.api_key is None or request.headers.get("authorization") == f"Bearer {gw.api_key}"

    async def body_of(request: Request) -> Any:
        try:
            return json.loads(await request.body())
        except ValueError as e:
            raise GatewayError(400, f"the body is not JSON: {e}") from None

    async def chat(request: Request, session_id: str | None) -> Any:
        if not authorised(request):
            return fail(GatewayError(401, "invalid API key", "authentication_error"))
        try:
            body = await body_of(request)
            try:
                req = ChatRequest.model_validate(body)
            except ValidationError as e:
                err = e.errors()[0]
                where = ".".join(str(p) for p in err["loc"])
                raise GatewayError(400, f"{where}: {err['msg']}", param=where) from None
            out = await gw.chat(session_id, req)
        except GatewayError as e:
            return fail(e)
        if not req.stream:
            return out

        async def events():
            for chunk in stream_chunks(out):
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def models(request: Request) -> Any:
        if not authorised(request):
            return fail(GatewayError(401, "invalid API key", "authentication_error"))
        card = {"id": gw.model_name, "object": "model", "created": 0, "owned_by": "arlkit"}
        return {"object": "list", "data": [card]}

    async def reward(request: Request, session_id: str | None) -> Any:
        if not authorised(request):
            return fail(GatewayError(401, "invalid API key", "authentication_error"))
        try:
            return gw.record_reward(session_id, await body_of(request))
        except GatewayError as e:
            return fail(e)

    @app.post("/v1/chat/completions")
    async def _chat(request: Request) -> Any:
        return await chat(request, request.headers.get(SESSION_HEADER))

    @app.post("/s/{session_id}/v1/chat/completions")
    async def _chat_session(session_id: str, request: Request) -> Any:
        return await chat(request, session_id)

    @app.get("/v1/models")
    async def _models(request: Request) -> Any:
        return await models(request)

    @app.get("/s/{session_id}/v1/models")
    async def _models_session(session_id: str, request: Request) -> Any:
        return await models(request)

    @app.post("/v1/reward")
    async def _reward(request: Request) -> Any:
        return await reward(request, request.headers.get(SESSION_HEADER))

    @app.post("/s/{session_id}/v1/reward")
    async def _reward_session(session_id: str, request: Request) -> Any:
        return await reward(request, session_id)

    return app
