"""The `python` tool: runs model-written code in a sandboxed subprocess and returns its stdout/stderr.

Layers (each stops a different escape; see tests/test_sandbox.py for the attacks they are tested against):
- a fresh temporary working directory, removed afterwards; the interpreter in isolated mode (`-I`: no user
  site, no PYTHON* variables, the script's folder not on sys.path) with a minimal environment;
- resource limits set in the child before the code runs: address space (memory bombs), CPU seconds
  (busy loops), file size (disk and output floods: stdout and stderr go to files in the working directory),
  core dumps off, and, when the child runs under a user of its own, the process count (fork bombs);
- an audit hook (PEP 578, tools/sandbox_child.py) refusing process creation, signals to other processes,
  sockets, foreign-function calls, raising limits, and writes outside the working directory;
- where `unshare` works, new user, network and PID namespaces: no network interface but a down loopback,
  and every process the code starts dies with it; a root host also drops to the `nobody` user, so file
  permissions protect the host's files;
- a wall-clock timeout that kills the child's whole process group.
`PythonTool.isolation` says which of "namespace+nobody", "namespace" or "audit-hook" is in force.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

from arlkit.errors import ArlkitError
from arlkit.tools.base import ToolResult

__all__ = ["PythonTool"]

_CHILD = str(Path(__file__).with_name("sandbox_child.py"))
_UNSHARE = ["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child"]
_NOBODY = 65534
_DESCRIPTION = "Run a Python program and return what it prints. Use print() to see results."


@lru_cache(maxsize=1)
def _best_isolation() -> str:
    """The strongest isolation this host supports, found once by running a trivial program under each."""
    if sys.platform != "linux" or shutil.which("unshare") is None:
        return "audit-hook"
    candidates = ["namespace+nobody", "namespace"] if os.geteuid() == 0 else ["namespace"]
    for mode in candidates:
        with tempfile.TemporaryDirectory() as d:
            if mode == "namespace+nobody":
                os.chown(d, _NOBODY, _NOBODY)
            try:
                r = subprocess.run(
                    [*_UNSHARE, sys.executable, "-I", "-c", "print(1)"],
                    cwd=d,
                    user=_NOBODY if mode == "namespace+nobody" else None,
                    capture_output=True,
                    timeout=20,
                )
            except (OSError, subprocess.SubprocessError):
                continue
            if r.returncode == 0 and r.stdout.strip() == b"1":
                return mode
    return "audit-hook"


class PythonTool:
    """A :class:`~arlkit.tools.base.Tool` running Python code in a sandbox; stateless between calls."""

    def __init__(
        self,
        time_limit_s: float = 5.0,
        memory_mb: int = 512,
        max_output_chars: int = 2000,
        max_file_mb: int = 8,
        max_procs: int = 64,
        isolation: str = "auto",
        name: str = "python",
        description: str = _DESCRIPTION,
    ) -> None:
        if time_limit_s <= 0 or memory_mb < 32 or max_output_chars < 1 or max_file_mb < 1:
            raise ArlkitError(
                "PythonTool: time_limit_s > 0, memory_mb >= 32, max_output_chars >= 1 and max_file_mb >= 1 "
                f"are needed, got {time_limit_s}, {memory_mb}, {max_output_chars}, {max_file_mb}"
            )
        valid = ("auto", "namespace+nobody", "namespace", "audit-hook")
        if isolation not in valid:
            raise ArlkitError(f"PythonTool: isolation must be one of {valid}, got {isolation!r}")
        self.time_limit_s, self.memory_mb, self.max_output_chars = time_limit_s, memory_mb, max_output_chars
        self.max_file_mb, self.max_procs, self._isolation = max_file_mb, max_procs, isolation
        self.name, self.description = name, description
        self.parameters: dict = {
            "type": "object",
            "properties": {"code": {"type": "string", "description": "The Python program to run."}},
            "required": ["code"],
        }

    @property
    def isolation(self) -> str:
        return _best_isolation() if self._isolation == "auto" else self._isolation

    def _spec(self, mode: str) -> dict:
        rlimits = {
            "RLIMIT_AS": self.memory_mb * 2**20,
            "RLIMIT_CPU": math.ceil(self.time_limit_s) + 1,
            "RLIMIT_FSIZE": self.max_file_mb * 2**20,
            "RLIMIT_CORE": 0,
        }
        if mode == "namespace+nobody":  # counted per user: meaningful only under a user of the child's own
            rlimits["RLIMIT_NPROC"] = self.max_procs
        return {"rlimits": rlimits, "block_network": mode == "audit-hook"}

    def _command(self, mode: str, snippet: str) -> list[str]:
        child = [sys.executable, "-I", "-B", _CHILD, json.dumps(self._spec(mode)), snippet]
        return child if mode == "audit-hook" else [*_UNSHARE, *child]

    def __call__(self, code: str) -> ToolResult:
        if not code.strip():
            return ToolResult("Error: the code was empty; write a program that prints its result.", ok=False)
        mode = self.isolation
        workdir = tempfile.mkdtemp(prefix="arlkit-python-")
        try:
            if mode == "namespace+nobody":
                os.chown(workdir, _NOBODY, _NOBODY)
            Path(workdir, "main.py").write_text(code)
            return self._run(mode, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _run(self, mode: str, workdir: str) -> ToolResult:
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1"}
        env["OPENBLAS_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"  # BLAS thread pools count as processes
        out_path, err_path = Path(workdir, ".stdout"), Path(workdir, ".stderr")
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(
                self._command(mode, "main.py"),
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # its own process group, killed as a whole on timeout
                user=_NOBODY if mode == "namespace+nobody" else None,
            )
            try:
                code = proc.wait(timeout=self.time_limit_s + 1.0)  # + interpreter start-up
                timed_out = False
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                code, timed_out = proc.wait(), True
        # the head of stdout (the start of the answer), the tail of stderr (where the exception is)
        stdout = _head(out_path, self.max_output_chars)
        stderr = _cut_tail(_clean_traceback(_tail(err_path, self.max_output_chars)), self.max_output_chars)
        return _result(code, timed_out, stdout, stderr, self.time_limit_s)

    def __repr__(self) -> str:
        return f"PythonTool(time_limit_s={self.time_limit_s}, memory_mb={self.memory_mb})"


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _head(path: Path, max_chars: int) -> str:
    with path.open("rb") as f:
        data = f.read(4 * max_chars + 4)  # UTF-8 needs at most 4 bytes per character
    text = data.decode("utf-8", errors="replace")
    return (
        text if len(text) <= max_chars else text[:max_chars] + f"\n... (output cut at {max_chars} characters)"
    )


def _tail(path: Path, max_chars: int) -> str:
    """The end of a file: enough bytes for `max_chars` characters after the sandbox's frames are removed."""
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - 8 * max_chars - 8))
        return f.read().decode("utf-8", errors="replace")


def _cut_tail(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else f"(earlier output cut)...\n{text[-max_chars:]}"


def _clean_traceback(stderr: str) -> str:
    """stderr without the sandbox's own frames (the child script and runpy), which only confuse a model."""
    lines, out, skip = stderr.splitlines(), [], False
    for line in lines:
        if line.startswith('  File "'):
            skip = "sandbox_child.py" in line or "runpy" in line
        elif not line.startswith("    "):
            skip = False
        if not skip:
            out.append(line)
    return "\n".join(out) + ("\n" if stderr.endswith("\n") else "")


def _result(code: int, timed_out: bool, stdout: str, stderr: str, limit: float) -> ToolResult:
    if timed_out or code == -signal.SIGXCPU:
        return ToolResult(
            f"Error: the program was stopped after the {limit:g} s time limit.\n{stdout}", ok=False
        )
    if code == -signal.SIGXFSZ:
        return ToolResult(f"Error: the program wrote more than the file size limit.\n{stdout}", ok=False)
    if code < 0:
        return ToolResult(f"Error: the program was killed by signal {-code}.\n{stdout}", ok=False)
    if code != 0:
        tail = stderr.strip().splitlines()[-1:] or [f"exit status {code}"]
        return ToolResult(f"Error: {tail[0]}\n{stderr}".rstrip(), ok=False)
    return ToolResult(stdout if not stderr else f"{stdout}\nstderr:\n{stderr}")
