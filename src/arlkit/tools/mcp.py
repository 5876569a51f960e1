"""The tools of an MCP server (the `mcp` SDK, stdio transport) as arlkit tools, with their JSON schemas.

`MCPServer(command)` starts the server process and keeps one client session to it on a background event-loop
thread; its `tools()` are plain callables that ToolEnv runs like any other (with its timeout; a failed or
erroring call becomes an error observation). The process ends with `close()` or, at the latest, when the
interpreter exits, so a server started by a task lives as long as the run. Needs the `mcp` extra.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from arlkit.errors import ArlkitError
from arlkit.tools.base import ToolResult

__all__ = ["MCPServer", "MCPTool"]


class MCPTool:
    """One tool of an MCP server; calling it sends `tools/call` and returns the text content."""

    def __init__(self, server: MCPServer, name: str, description: str, parameters: dict):
        self.server, self.name, self.description, self.parameters = server, name, description, parameters

    def __call__(self, **kwargs: Any) -> ToolResult:
        result = self.server.call(self.name, kwargs)
        text = "\n".join(getattr(c, "text", str(c)) for c in result.content)
        failed = getattr(result, "is_error", None) or getattr(result, "isError", False)
        return ToolResult(text, ok=not failed)


class MCPServer:
    """A running MCP server (`command`: the program and its arguments) and its tools.

    Raises:
        ArlkitError: `mcp` is not installed, or the server does not start and list its tools in `start_timeout_s`.
    """

    def __init__(
        self,
        command: Sequence[str],
        env: dict[str, str] | None = None,
        start_timeout_s: float = 30.0,
        call_timeout_s: float = 30.0,
    ):
        try:
            from mcp import StdioServerParameters
        except ImportError:
            raise ArlkitError("MCP tools need the mcp SDK: pip install 'arlkit[mcp]'") from None
        self.command, self.call_timeout_s = list(command), call_timeout_s
        self._params = StdioServerParameters(command=self.command[0], args=self.command[1:], env=env)
        self._loop = asyncio.new_event_loop()
        self._ready: Future = Future()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="mcp-client")
        self._thread.start()
        self._done = asyncio.run_coroutine_threadsafe(self._serve(), self._loop)
        try:
            self._tools: list[MCPTool] = self._ready.result(timeout=start_timeout_s)
        except Exception as e:
            self.close()
            while getattr(e, "exceptions", None):  # anyio's task groups wrap the cause in exception groups
                e = e.exceptions[0]
            reason = (
                "it did not answer in time" if isinstance(e, TimeoutError) else f"{type(e).__name__}: {e}"
            )
            raise ArlkitError(f"MCP server {' '.join(self.command)!r} did not start: {reason}") from None
        atexit.register(self.close)

    async def _serve(self) -> None:
        """Open the session, list the tools, then hold the session open until `close`."""
        from mcp import ClientSession
        from mcp.client.stdio import stdio_client

        self._stop = asyncio.Event()
        try:
            async with stdio_client(self._params) as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                listed = await session.list_tools()
                self._session = session
                self._ready.set_result([self._tool(t) for t in listed.tools])
                await self._stop.wait()
        except BaseException as e:
            if not self._ready.done():
                self._ready.set_exception(e)
            raise

    def _tool(self, t: Any) -> MCPTool:
        schema = getattr(t, "input_schema", None) or getattr(t, "inputSchema", None) or {"type": "object"}
        return MCPTool(self, t.name, t.description or "", dict(schema))

    def tools(self) -> list[MCPTool]:
        return list(self._tools)

    def call(self, name: str, arguments: dict) -> Any:
        """The server's result of one call; raises when the server is gone or does not answer in time."""
        call = self._session.call_tool(name, arguments)
        return asyncio.run_coroutine_threadsafe(call, self._loop).result(timeout=self.call_timeout_s)

    def close(self) -> None:
        """End the session and the server process (idempotent)."""
        if not self._loop.is_running():
            return
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        with contextlib.suppress(Exception):  # a server that died already: nothing left to end
            self._done.result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
