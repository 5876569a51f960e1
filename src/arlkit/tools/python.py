"""The `python` tool: runs model-written code in a sandbox and returns its stdout/stderr.

Treat every call as hostile: a policy optimised for reward writes it. The boundary is the OS (PEP 578 says
audit hooks are not one), in layers (tests/test_sandbox_escapes.py runs an attacker's catalogue against them):
- bubblewrap (tools/bwrap.py): new user/PID/network/IPC/UTS namespaces, an unprivileged uid, a fresh /proc,
  read-only binds of only the interpreter and its packages, an empty size-capped tmpfs as working directory,
  and a seccomp filter (tools/seccomp.py) refusing ptrace, bpf, keyctl, perf, mount, namespaces, ...;
- a cgroup per call (tools/cgroup.py) capping processes and memory summed over all of them, where writable;
- resource limits set before the code runs and inherited by every process it starts: address space, CPU
  seconds, file size, open files, core dumps off, and the process count (RLIMIT_NPROC, counted per user
  namespace on Linux >= 5.14, so it bounds the sandbox's processes and nothing else). Memory summed over
  children is therefore bounded by memory_mb * max_procs;
- an audit hook (tools/sandbox_child.py) refusing process creation, signals, foreign code, sockets and
  writes outside the working directory: defence in depth only;
- a wall-clock timeout killing bwrap's process group; the PID namespace then takes every process with it.
Without bubblewrap the tool refuses to start unless `isolation="unsafe"` is given, which runs the audit hook
alone and warns on every call.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from arlkit.errors import ArlkitError
from arlkit.tools import bwrap, seccomp
from arlkit.tools.base import ToolResult
from arlkit.tools.cgroup import CallCgroup, writable_controllers

__all__ = ["ISOLATIONS", "PythonTool"]

ISOLATIONS = ("bwrap", "unsafe")
_CHILD = str(Path(__file__).with_name("sandbox_child.py"))
_DESCRIPTION = "Run a Python program and return what it prints. Use print() to see results."
_log = logging.getLogger(__name__)
# sandboxes alive at once in this process, over every env and episode: a rollout of 64 episodes must not start
# 64 interpreters on a 2-core machine; a call waits for a slot (its wait counts toward the env's tool timeout)
SANDBOX_SLOTS = threading.BoundedSemaphore(max(2, os.cpu_count() or 2))


class PythonTool:
    """A :class:`~arlkit.tools.base.Tool` running Python code in a sandbox; stateless between calls.

    Raises:
        ArlkitError: a bad limit, an unknown isolation, or isolation "bwrap" where bubblewrap does not work.
    """

    def __init__(
        self,
        time_limit_s: float = 5.0,
        memory_mb: int = 512,
        max_output_chars: int = 2000,
        max_file_mb: int = 8,
        max_procs: int = 16,
        isolation: str = "bwrap",
        name: str = "python",
        description: str = _DESCRIPTION,
    ) -> None:
        if time_limit_s <= 0 or memory_mb < 32 or max_output_chars < 1 or max_file_mb < 1 or max_procs < 1:
            raise ArlkitError(
                "PythonTool: time_limit_s > 0, memory_mb >= 32, max_output_chars >= 1, max_file_mb >= 1 and "
                f"max_procs >= 1 are needed, got {time_limit_s}, {memory_mb}, {max_output_chars}, "
                f"{max_file_mb}, {max_procs}"
            )
        if isolation not in ISOLATIONS:
            raise ArlkitError(f"PythonTool: isolation must be one of {ISOLATIONS}, got {isolation!r}")
        if isolation == "bwrap" and (why := bwrap.available()) is not None:
            raise ArlkitError(
                f"PythonTool: model-written code runs only under bubblewrap, which does not work here: {why}. "
                'Install it, or set isolation="unsafe" to run code with an audit hook alone (not a boundary).'
            )
        self.time_limit_s, self.memory_mb, self.max_output_chars = time_limit_s, memory_mb, max_output_chars
        self.max_file_mb, self.max_procs, self.isolation = max_file_mb, max_procs, isolation
        self.name, self.description = name, description
        self.parameters: dict = {
            "type": "object",
            "properties": {"code": {"type": "string", "description": "The Python program to run."}},
            "required": ["code"],
        }
        caps = f"cgroups {','.join(writable_controllers()) or 'none (RLIMIT_NPROC only)'}"
        _log.info("python tool: isolation %s (%s; %s)", isolation, _ISOLATION_NOTE[isolation], caps)

    def _spec(self) -> dict:
        rlimits = {
            "RLIMIT_AS": self.memory_mb * 2**20,
            "RLIMIT_CPU": math.ceil(self.time_limit_s) + 1,
            "RLIMIT_FSIZE": self.max_file_mb * 2**20,
            "RLIMIT_NOFILE": 256,
            "RLIMIT_CORE": 0,
        }
        if self.isolation == "bwrap":  # counted per user namespace: the sandbox's own processes only
            rlimits["RLIMIT_NPROC"] = self.max_procs
        return {"rlimits": rlimits, "block_network": self.isolation == "unsafe"}

    def _command(self, workdir: str, seccomp_fd: int | None = None) -> list[str]:
        argv = [json.dumps(self._spec()), "main.py"]
        if self.isolation == "unsafe":
            return [sys.executable, "-I", "-B", _CHILD, *argv]
        command = [sys.executable, "-I", "-B", bwrap.CHILD, *argv]
        return bwrap.bwrap_command(str(Path(workdir, "main.py")), self._tmpfs_bytes, command, seccomp_fd)

    @property
    def _tmpfs_bytes(self) -> int:
        return self.max_file_mb * 2**20 * 4  # a few files at the size limit

    def __call__(self, code: str) -> ToolResult:
        if not code.strip():
            return ToolResult("Error: the code was empty; write a program that prints its result.", ok=False)
        if self.isolation == "unsafe":
            _log.warning("python tool: running model-written code WITHOUT an OS sandbox (isolation=unsafe)")
        with SANDBOX_SLOTS:
            return self._call(code)

    def _call(self, code: str) -> ToolResult:
        workdir = tempfile.mkdtemp(prefix="arlkit-python-")
        try:
            Path(workdir, "main.py").write_text(code)
            if self.isolation == "unsafe":
                return self._run(self._command(workdir), workdir)
            # + 2: bwrap and its PID-1 reaper; memory: the code's and its tmpfs's pages
            group = CallCgroup(self.max_procs + 2, self.memory_mb * 2**20 + self._tmpfs_bytes)
            filter_fd = _seccomp_fd()
            try:
                command = group.wrap(self._command(workdir, filter_fd))
                return self._run(command, workdir, () if filter_fd is None else (filter_fd,))
            finally:
                group.close()
                if filter_fd is not None:
                    os.close(filter_fd)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _run(self, command: list[str], workdir: str, pass_fds: tuple[int, ...] = ()) -> ToolResult:
        home = workdir if self.isolation == "unsafe" else bwrap.WORKDIR
        env = {"PATH": "/usr/bin:/bin", "HOME": home, "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1"}
        env["OPENBLAS_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"  # BLAS thread pools count as processes
        # stdout and stderr go to host files outside the sandbox, capped by RLIMIT_FSIZE
        out_path, err_path = Path(workdir, ".stdout"), Path(workdir, ".stderr")
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(
                command,
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # its own process group, killed as a whole on timeout
                pass_fds=pass_fds,
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
        return f"PythonTool(time_limit_s={self.time_limit_s}, memory_mb={self.memory_mb}, isolation={self.isolation})"


_ISOLATION_NOTE = {
    "bwrap": "bubblewrap namespaces, unprivileged uid, read-only interpreter, tmpfs working directory",
    "unsafe": "audit hook only, NOT a security boundary",
}


def _seccomp_fd() -> int | None:
    """A fresh descriptor holding the seccomp filter for bwrap to read (it reads to the end), or None."""
    filt = seccomp.program()
    if filt is None:
        return None
    fd = os.memfd_create("arlkit-seccomp", 0)
    os.write(fd, filt)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


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
