"""The `python` tool survives hostile code: an infinite loop, a memory bomb, a fork bomb, writing outside its
directory and a network call each come back as an error observation, and the host process is unharmed.

Every attack runs under bubblewrap (isolation "bwrap": the network call meets a namespace with no interface)
and under the explicit "unsafe" mode, the audit hook alone (the network call meets the hook). The test ids say
which. tests/test_sandbox_escapes.py holds the attacker's catalogue against bubblewrap itself.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from arlkit.errors import ArlkitError
from arlkit.tools.python import ISOLATIONS, PythonTool

MODES = list(ISOLATIONS)


def _attacks(outside: Path) -> dict[str, str]:
    return {
        "infinite_loop": "while True:\n    pass",
        "sleep_forever": "import time\ntime.sleep(1000)",
        "memory_bomb": "x = bytearray(50 * 2**30)\nprint(len(x))",
        "growing_memory": "x = []\nwhile True:\n    x.append(' ' * 2**20)",
        "fork_bomb": "import os\nwhile True:\n    os.fork()",
        "subprocess": "import subprocess\nsubprocess.run(['sh', '-c', 'echo $((6 * 7))xx'])",
        "write_outside": f"open({str(outside)!r}, 'w').write('pwned')",
        "write_outside_relative": "open('../pwned.txt', 'w').write('pwned')",
        "network": "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)\nprint('connec' + 'ted')",
        "kill_parent": f"import os\nos.kill({os.getpid()}, 9)",
        "output_flood": "while True:\n    print('x' * 100000)",
    }


@pytest.fixture(scope="module", params=MODES)
def tool(request) -> PythonTool:
    return PythonTool(
        time_limit_s=1.0, memory_mb=256, max_output_chars=500, max_file_mb=1, isolation=request.param
    )


@pytest.mark.parametrize("attack", list(_attacks(Path("/x"))))
def test_hostile_code_is_an_error_observation_and_the_host_is_unharmed(tool, attack, tmp_path) -> None:
    outside = tmp_path / "pwned.txt"
    host_pid, host_cwd = os.getpid(), os.getcwd()
    start = time.perf_counter()
    result = tool(code=_attacks(outside)[attack])
    elapsed = time.perf_counter() - start
    print(f"isolation={tool.isolation} attack={attack} -> {result.text.splitlines()[0]!r} in {elapsed:.2f} s")
    assert not result.ok and result.text.startswith("Error:"), result
    # markers only a successful attack prints (the traceback quotes the source, so never the literal text)
    assert "42xx" not in result.text and "connected\n" not in result.text
    assert elapsed < 1.0 + 1.0 + 5.0  # time limit + start-up allowance + slack for a loaded machine
    assert not outside.exists() and not (tmp_path.parent / "pwned.txt").exists()
    assert os.getpid() == host_pid and os.getcwd() == host_cwd  # still us, still where we were
    assert len(result.text) <= 500 + 200  # output limit plus the error line


def test_normal_code_runs_and_prints(tool) -> None:
    assert tool(code="print(37 + 48 - 19)").text == "66\n"
    out = tool(code="import sys\nprint('a')\nprint('warn', file=sys.stderr)")
    assert out.ok and out.text == "a\n\nstderr:\nwarn\n"
    files = tool(code="open('notes.txt', 'w').write('ok')\nprint(open('notes.txt').read())")
    assert files.ok and files.text == "ok\n"  # its own working directory is writable
    err = tool(code="def f():\n    return 1 / 0\nf()")
    # the traceback names the model's file and line, not the sandbox's own frames
    assert not err.ok and err.text.startswith("Error: ZeroDivisionError: division by zero")
    assert 'File "main.py", line 2, in f' in err.text and "sandbox_child" not in err.text
    long = tool(code="print('y' * 5000)")
    assert long.text == "y" * 500 + "\n... (output cut at 500 characters)"


def test_no_files_are_left_behind(tool, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    tool(code="open('big.bin', 'wb').write(b'0' * 1000)\nprint('done')")
    assert list(tmp_path.iterdir()) == []


def test_bad_limits_fail_naming_the_value() -> None:
    with pytest.raises(ArlkitError, match="isolation"):
        PythonTool(isolation="docker")
    with pytest.raises(ArlkitError, match="memory_mb"):
        PythonTool(memory_mb=1)


def test_without_bubblewrap_the_tool_refuses_unless_unsafe_is_asked_for(monkeypatch, caplog) -> None:
    from arlkit.tools import bwrap

    monkeypatch.setenv("PATH", "/nonexistent")  # no bwrap on PATH
    bwrap.available.cache_clear()
    try:
        with pytest.raises(ArlkitError, match=r'bwrap command is missing.*isolation="unsafe"'):
            PythonTool()
        unsafe = PythonTool(isolation="unsafe")
        with caplog.at_level("WARNING", logger="arlkit.tools.python"):
            assert unsafe(code="print(1)").text == "1\n" and unsafe(code="print(2)").text == "2\n"
        assert [r.message.count("WITHOUT an OS sandbox") for r in caplog.records] == [1, 1]  # every call
    finally:
        bwrap.available.cache_clear()


def test_sandboxes_alive_at_once_are_bounded_per_process(monkeypatch) -> None:
    import threading

    from arlkit.tools import python

    monkeypatch.setattr(python, "SANDBOX_SLOTS", threading.BoundedSemaphore(1))
    tool = PythonTool(time_limit_s=2.0)
    code = "import time, os\nprint(time.time())\ntime.sleep(0.4)\nprint(time.time())"
    spans: list[list[float]] = []
    threads = [
        threading.Thread(target=lambda: spans.append(list(map(float, tool(code=code).text.split()))))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first, second = sorted(spans)
    assert (
        len(first) == len(second) == 2 and second[0] >= first[1]
    )  # the second started after the first ended
