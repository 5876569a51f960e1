"""A task of the `verifiers` package (its v1 API, 0.4) as an env of the message protocol.

The task's `system_prompt` and `prompt` are the first messages. With tools (its taskset's and its own
`Toolset`s, served in this process by `ToolServers`), an assistant message holding Hermes tool calls
(`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`) gets one `tool` message per call and the
episode goes on; a message without calls ends it, as verifiers' chat loop does, and so does `max_turns`.
The finished conversation becomes a `verifiers.v1.Trace` (one message node per message, the assistant's
marked sampled) and `Task.score` fills its rewards and metrics: the episode's reward is `Trace.reward`
(Σ weight × score), each reward function's score is the component `reward/<name>` and each metric
`env/<name>`. A reward function that raises (or outlasts its timeout) raises `VerifiersScoringError` from
`step`, which the rollout engine records as an env error (the episode is left out of the update and counted
in `env/errors`), as verifiers marks such a trace failed. Text only; the verifiers coroutines run on one
event loop thread of the process (`run_async`), so a toolset's loop-bound state lives across steps.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any

from arlkit.envs.message_env import EnvStep
from arlkit.envs.parsing import HermesFormat, without_thinking
from arlkit.errors import ArlkitError

__all__ = ["ToolServers", "VerifiersEnv", "VerifiersScoringError", "run_async"]

MAX_CALLS_PER_ACTION = 8  # as ToolEnv's default: the calls past it get an error message and do not run

_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


class VerifiersScoringError(RuntimeError):
    """A verifiers reward or metric function raised or timed out: the episode ends as an env error."""


def run_async(coro: Coroutine, timeout_s: float | None = None) -> Any:
    """`coro`'s result, run on the process's verifiers event loop (a daemon thread, started on first use);
    called from any thread but that loop's. On timeout the coroutine is cancelled and TimeoutError raised."""
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, daemon=True, name="verifiers-loop").start()
    future = asyncio.run_coroutine_threadsafe(coro, _loop)
    try:
        return future.result(timeout_s)
    except concurrent.futures.TimeoutError:  # the builtin TimeoutError from Python 3.11 on
        future.cancel()
        raise TimeoutError(f"no result in {timeout_s} s") from None


class ToolServers:
    """verifiers `Toolset`s served in this process: each registers its `@vf.tool` methods on an in-process
    `mcp` server, so the JSON schemas and argument validation are the ones verifiers advertises over MCP;
    a tool is named `<server>_<tool>` as verifiers' harnesses qualify it (bare when `TOOL_PREFIX` is None)."""

    def __init__(self, toolsets: Sequence[Any]):
        from mcp.server.mcpserver import MCPServer

        self.toolsets = list(toolsets)
        self.schemas: list[dict] = []
        self._dispatch: dict[str, tuple[Any, str]] = {}
        for toolset in self.toolsets:
            prefix = toolset.server_name
            server = MCPServer(prefix or type(toolset).__name__)
            toolset.register(server)
            for t in run_async(server.list_tools()):
                name = f"{prefix}_{t.name}" if prefix else t.name
                if name in self._dispatch:
                    raise ArlkitError(f"two verifiers tools are named {name!r}; tool names must be unique")
                self._dispatch[name] = (server, t.name)
                function = {"name": name, "description": t.description or "", "parameters": t.input_schema}
                self.schemas.append({"type": "function", "function": function})

    def __contains__(self, name: str) -> bool:
        return name in self._dispatch

    async def start(self, task: Any = None) -> None:
        """Each toolset's `setup()`, then `setup_task(task)` for a task's own toolsets."""
        for toolset in self.toolsets:
            await toolset.setup()
            if task is not None:
                await toolset.setup_task(task)

    async def close(self) -> None:
        for toolset in self.toolsets:  # what setup() entered on the toolset's exit stack (verifiers' _serve)
            stack = getattr(toolset, "_exit_stack", None)
            if stack is not None:
                await stack.aclose()

    async def call(self, name: str, arguments: dict) -> tuple[str, bool]:
        """The tool's text content and whether it succeeded; a raising tool or bad arguments fail the call."""
        server, raw = self._dispatch[name]
        try:
            result = await server.call_tool(raw, arguments)
        except Exception as e:  # mcp's ToolError ("Error executing tool ..."): invalid arguments or it raised
            return str(e) if str(e).startswith("Error") else f"Error: {e}", False
        text = "\n".join(getattr(c, "text", str(c)) for c in result.content)
        return text, not result.is_error


class VerifiersEnv:
    """Episodes of verifiers tasks: `tasks` maps a row's `id` to its `verifiers.v1.Task`; `shared` serves
    the taskset's tools; `prompt_tools` are all tool schemas (shared and per-task), rendered by the chat
    template; `em_from` names the reward or metric that is the episode's `em` (None: the reward is > 0)."""

    def __init__(
        self,
        tasks: Mapping[int, Any],
        shared: ToolServers | None = None,
        prompt_tools: list[dict] | None = None,
        max_turns: int = 4,
        em_from: str | None = None,
        timeout_s: float = 60.0,
    ):
        self.tasks, self.shared, self.prompt_tools = tasks, shared, prompt_tools
        self.max_turns, self.em_from, self.timeout_s = max_turns, em_from, timeout_s
        self.own: ToolServers | None = None
        self.history: list[Any] = []  # verifiers messages, for the trace

    def reset(self, row: dict) -> list[dict]:
        import verifiers.v1 as vf

        if row.get("id") not in self.tasks:
            raise ArlkitError(f"row id {row.get('id')!r} is not a task of the verifiers taskset")
        self.task, self.turns, self.calls, self.failed = self.tasks[row["id"]], 0, 0, 0
        self._close_own()
        toolsets = type(self.task).toolsets(self.task.config)
        self.own = ToolServers(toolsets) if toolsets else None
        if self.own is not None:
            run_async(self.own.start(self.task), self.timeout_s)
        data = self.task.data
        system = [vf.SystemMessage(content=data.system_prompt)] if data.system_prompt else []
        prompt = [vf.UserMessage(content=data.prompt)] if isinstance(data.prompt, str) else list(data.prompt)
        self.history = [*system, *prompt]
        return [_chat(m) for m in self.history]

    def step(self, assistant_message: str) -> EnvStep:
        import verifiers.v1 as vf

        self.turns += 1
        content = without_thinking(assistant_message).strip()
        parsed = HermesFormat().parse(assistant_message) if self.prompt_tools else None
        if parsed is None or not (parsed.calls or parsed.errors):  # no call: the assistant has replied
            self.history.append(vf.AssistantMessage(content=content))
            return self._finish("agent_completed")
        if self.turns >= self.max_turns:  # its calls would be answered on a turn it does not get
            self.history.append(vf.AssistantMessage(content=content))
            return self._finish("max_turns")
        calls = [
            vf.ToolCall(id=f"call_{self.turns}_{k}", name=c.name, arguments=json.dumps(c.arguments))
            for k, c in enumerate(parsed.calls)
        ]
        self.history.append(vf.AssistantMessage(content=content, tool_calls=calls))
        replies = [
            (c.id, c.name, self._call(c.name, p.arguments, k))
            for k, (c, p) in enumerate(zip(calls, parsed.calls, strict=True))
        ]
        replies += [
            (f"call_{self.turns}_error_{k}", None, f"Error: {e}") for k, e in enumerate(parsed.errors)
        ]
        self.calls, self.failed = self.calls + len(parsed.errors), self.failed + len(parsed.errors)
        self.history += [vf.ToolMessage(tool_call_id=i, name=n, content=text) for i, n, text in replies]
        return EnvStep([{"role": "tool", "content": text} for _, _, text in replies], 0.0, False, {})

    def _call(self, name: str, arguments: dict, k: int) -> str:
        self.calls += 1
        servers = [s for s in (self.own, self.shared) if s is not None and name in s]
        if k >= MAX_CALLS_PER_ACTION or not servers:
            self.failed += 1
            if servers:
                return f"Error: not run: at most {MAX_CALLS_PER_ACTION} tool calls per message"
            known = ", ".join(t["function"]["name"] for t in self.prompt_tools or [])
            return f"Error: unknown tool {name!r}; available: {known}"
        try:
            text, ok = run_async(servers[0].call(name, arguments), self.timeout_s)
        except TimeoutError:
            text, ok = f"Error: tool {name!r} timed out after {self.timeout_s:g} s", False
        self.failed += not ok
        return text

    def _finish(self, stop: str) -> EnvStep:
        trace = _trace(self.task, self.history, stop)
        timeout = self.task.data.timeout.scoring or self.timeout_s
        try:
            run_async(self.task.score(trace), timeout)
        except TimeoutError:
            raise VerifiersScoringError(f"verifiers scoring took more than {timeout:g} s") from None
        except Exception as e:  # verifiers wraps what a reward raised in a TaskError
            raise VerifiersScoringError(f"verifiers scoring failed: {e}") from e
        finally:
            self._close_own()
        trace.ok = True
        scores = {name: r.score for name, r in trace.rewards.items() if r is not None}
        metrics = {name: v for name, v in trace.metrics.items() if v is not None}
        if self.prompt_tools:
            metrics.update(tool_calls=float(self.calls), failed_tool_calls=float(self.failed))
        if self.em_from is not None:
            if self.em_from not in {**scores, **metrics}:
                raise ArlkitError(
                    f"config field 'task.em_from': {self.em_from!r} is none of the task's rewards "
                    f"({', '.join(scores) or 'none'}) or metrics ({', '.join(metrics) or 'none'})"
                )
            metrics["em"] = {**metrics, **scores}[self.em_from]
        info = {"rewards": scores, "metrics": metrics, "finish_reason": stop}
        return EnvStep([], float(trace.reward), True, info)

    def _close_own(self) -> None:
        if self.own is not None:
            own, self.own = self.own, None
            run_async(own.close(), self.timeout_s)


def _trace(task: Any, messages: Sequence[Any], stop: str) -> Any:
    """A verifiers Trace of `task` holding `messages` as one branch (assistant messages sampled)."""
    import verifiers.v1 as vf
    from verifiers.v1.graph import MessageNode

    trace_task = vf.TraceTask(type=type(task).__name__, data=task.data, key=task.key, hash=task.hash)
    trace = vf.Trace(task=trace_task, agent=vf.AgentInfo(config=vf.AgentConfig()))
    for i, m in enumerate(messages):
        parent = i - 1 if i else None
        trace.nodes.append(MessageNode(parent=parent, message=m, sampled=m.role == "assistant"))
    trace.stop(stop)
    return trace


def _chat(message: Any) -> dict:
    """A verifiers message as a chat-template dict (text content; image parts are dropped)."""
    from verifiers.v1.types import content_text

    out: dict[str, Any] = {"role": message.role, "content": content_text(message.content)}
    for call in getattr(message, "tool_calls", None) or []:  # a prompt's own assistant turns
        function = {"name": call.name, "arguments": call.arguments}
        out.setdefault("tool_calls", []).append({"id": call.id, "type": "function", "function": function})
    if message.role == "tool":
        out["tool_call_id"] = message.tool_call_id
    return out
