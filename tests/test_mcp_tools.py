"""MCP tools (tools/mcp.py) with the real mcp SDK: a small stdio server written here, its tools with their
schemas in a ToolEnv, a server that dies mid-run or never starts, the process ended with close(), and the
examples/mcp_letters.py task trained by `arlkit train`."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from conftest import train_example

from arlkit.envs.tool_env import ToolEnv
from arlkit.errors import ArlkitError
from arlkit.tools.mcp import MCPServer

ROOT = Path(__file__).parents[1]
SERVER = '''
import os, sys
from mcp.server.mcpserver import MCPServer

server = MCPServer("t")
open(sys.argv[1], "w").write(str(os.getpid()))


@server.tool()
def add(a: int, b: int) -> str:
    """Add two integers."""
    return str(a + b)


@server.tool()
def die() -> str:
    """End the server process."""
    os._exit(1)


server.run()
'''


class _Exact:
    def prompt(self, row: dict) -> str:
        return row["question"]

    def score(self, answer: str | None, row: dict) -> dict[str, float]:
        return {"em": float(answer == row["answer"])}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # a zombie has ended too


def test_an_mcp_servers_tools_run_in_a_tool_env_and_the_server_ends_with_close(tmp_path) -> None:
    script, pidfile = tmp_path / "server.py", tmp_path / "pid"
    script.write_text(SERVER)
    server = MCPServer([sys.executable, str(script), str(pidfile)])
    tools = {t.name: t for t in server.tools()}
    assert (
        tools["add"].parameters["required"] == ["a", "b"] and tools["add"].description == "Add two integers."
    )
    env = ToolEnv(list(tools.values()), _Exact(), max_turns=3)
    env.reset({"question": "2 + 3?", "answer": "5"})
    call = '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>'
    assert env.step(call).observations == ({"role": "tool", "content": "5"},)
    bad = '<tool_call>{"name": "add", "arguments": {"a": "two", "b": 3}}</tool_call>'
    assert "invalid arguments" in env.step(bad).observations[0]["content"]  # checked against the schema
    pid = int(pidfile.read_text())
    assert _alive(pid)
    server.close()
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid)


def test_a_server_that_dies_mid_run_is_a_failed_call_and_one_that_never_starts_stops_the_run(
    tmp_path,
) -> None:
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    server = MCPServer([sys.executable, str(script), str(tmp_path / "pid")], call_timeout_s=5)
    env = ToolEnv(server.tools(), _Exact(), max_turns=3, tool_timeout_s=8)
    env.reset({"question": "?", "answer": "x"})
    step = env.step('<tool_call>{"name": "die", "arguments": {}}</tool_call>')
    assert step.calls[0].ok is False and "failed" in step.observations[0]["content"]
    step = env.step('<tool_call>{"name": "add", "arguments": {"a": 1, "b": 1}}</tool_call>')
    assert step.calls[0].ok is False  # the server is gone: every later call fails, the episode goes on
    server.close()
    with pytest.raises(ArlkitError, match="did not start"):
        MCPServer([sys.executable, "-c", "import sys; sys.exit(3)"], start_timeout_s=20)


def test_the_mcp_example_trains_by_the_command_line(tiny, tmp_path) -> None:
    run = train_example("examples/mcp_letters.yaml", tiny.sft_dir, tmp_path)
    assert json.loads((run / "summary.json").read_text())["steps"] == 2
