"""The attacker's catalogue of issue 19, run through the python tool exactly as a model's call reaches it, under
bubblewrap. Each case is code that prints a marker only if the escape worked; the test checks the marker is
absent and, where the target is on the host, the host-side evidence (the file, process or listener untouched).

Routes the audit hook never sees (`_posixsubprocess.fork_exec` via `multiprocessing.util.spawnv_passfds`,
sockets, which the hook allows under bwrap) test the OS boundary itself. Without a working bwrap the tool
fixture raises, so these tests fail rather than skip: CI installs bubblewrap (.ci/run).
"""

from __future__ import annotations

import _ctypes
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from arlkit.tools.python import PythonTool

MAX_PROCS = 8
# spawns `argv` without the audit hook seeing it (fork_exec has no audit event); returns the child's pid
SPAWN = (
    "from multiprocessing.util import spawnv_passfds as sp\n"
    "def spawn(*a):\n    return sp(a[0].encode(), [x.encode() for x in a], ())\n"
)


@pytest.fixture(scope="module")
def tool() -> PythonTool:
    return PythonTool(time_limit_s=3.0, memory_mb=256, max_file_mb=1, max_procs=MAX_PROCS, isolation="bwrap")


def _run(tool: PythonTool, code: str) -> str:
    return tool(code=code).text


def test_code_runs_as_an_unprivileged_user_and_sees_no_host_files(tool, tmp_path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("root only")
    secret.chmod(0o600)
    out = _run(
        tool, f"import os\nprint('uid', os.getuid(), os.geteuid())\nprint(open({str(secret)!r}).read())"
    )
    assert out.startswith("Error: FileNotFoundError"), out  # the host's folders are not in the sandbox
    assert "uid 65534 65534" in _run(tool, "import os\nprint('uid', os.getuid(), os.geteuid())")
    assert "root only" not in out


WRITE_ROUTES = {  # each tries to create sys.prefix/pwned (a read-only bind), or to change a bound file
    "dir_fd": "fd = os.open(sys.prefix, os.O_RDONLY)\nos.close(os.open('pwned', os.O_CREAT | os.O_WRONLY, dir_fd=fd))",
    "sqlite": "import sqlite3\nsqlite3.connect(sys.prefix + '/pwned').execute('create table t (x)')",
    "mkfifo": "os.mkfifo(sys.prefix + '/pwned')",
    "mkfifo_process": SPAWN + "assert os.waitpid(spawn('/usr/bin/mkfifo', sys.prefix + '/pwned'), 0)[1] == 0",
    "touch_process": SPAWN + "assert os.waitpid(spawn('/usr/bin/touch', sys.prefix + '/pwned'), 0)[1] == 0",
    "setxattr": "os.setxattr(sys.prefix + '/pyvenv.cfg', 'user.pwned', b'1')",
    "delete": "os.unlink('/opt/arlkit/sandbox_child.py')",
}


@pytest.mark.parametrize("route", list(WRITE_ROUTES))
def test_writes_outside_the_working_directory_fail_by_every_route(tool, route) -> None:
    target, cfg = Path(sys.prefix, "pwned"), Path(sys.prefix, "pyvenv.cfg")
    out = _run(tool, "import os, sys\n" + WRITE_ROUTES[route] + "\nprint('wr' + 'ote')")
    try:
        assert "wrote" not in out and not (target.exists() or target.is_fifo()), out
    finally:
        if target.exists() or target.is_fifo():
            target.unlink()
    assert Path(__file__).parents[1].joinpath("src/arlkit/tools/sandbox_child.py").exists()
    assert "user.pwned" not in os.listxattr(cfg)


def test_processes_are_capped_whatever_the_route(tool) -> None:
    # 50 processes through fork_exec, which the audit hook never sees: RLIMIT_NPROC (per user namespace) stops them
    code = SPAWN + (
        "n = 0\nfor _ in range(50):\n    try:\n        spawn('/usr/bin/sleep', '5')\n        n += 1\n"
        "    except OSError as e:\n        print('refused:', e.strerror)\n        break\nprint('spawned', n)"
    )
    out = _run(tool, code)
    spawned = int(out.split("spawned ")[1].split()[0])
    assert spawned < MAX_PROCS and "refused: Resource temporarily unavailable" in out, out
    assert not list(Path("/sys/fs/cgroup/pids").glob("arlkit-*"))  # the call's group is gone


def test_memory_summed_over_children_is_bounded(tool) -> None:
    # 6 children of 200 MB each, every one under the 256 MB per-process limit: 1.2 GB in all. The call's memory
    # cgroup (256 MB + the 4 MB tmpfs) holds one at a time, so the kernel kills the others (signal 9)
    child = "b = bytearray(200 * 2**20)\nimport time\ntime.sleep(1.5)"
    code = SPAWN + (
        f"import os, sys\npids = [spawn(sys.executable, '-c', {child!r}) for _ in range(6)]\n"
        "print('exits', [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids])"
    )
    out = _run(tool, code)
    exits = [int(x) for x in out.split("exits [")[1].split("]")[0].split(", ")]
    assert len(exits) == 6 and exits.count(0) <= 1 and -9 in exits, out


def test_a_written_shared_library_is_not_loaded(tool) -> None:
    # the smallest of the interpreter's own extension modules stands in for a model-written library
    dynload = Path(_ctypes.__file__).parent
    libc = str(min(dynload.glob("*.so"), key=lambda p: p.stat().st_size))
    out = _run(
        tool,
        f"import shutil, ctypes\nshutil.copy({libc!r}, 'x.so')\nctypes.CDLL('./x.so')\nprint('load' + 'ed')",
    )
    assert out.startswith("Error: PermissionError: sandbox: loading the shared library"), out


def test_no_socket_reaches_the_host(tool, tmp_path) -> None:
    path = tmp_path / "host.sock"
    listeners = {
        "unix_path": (socket.AF_UNIX, str(path)),
        "unix_abstract": (socket.AF_UNIX, f"\0arlkit-test-{os.getpid()}"),
        "tcp_loopback": (socket.AF_INET, ("127.0.0.1", 0)),
        "tcp6_loopback": (socket.AF_INET6, ("::1", 0)),
    }
    servers = {}
    for name, (family, address) in listeners.items():
        s = socket.socket(family, socket.SOCK_STREAM)
        s.bind(address)
        s.listen()
        s.setblocking(False)
        servers[name] = s
    try:
        for name, s in servers.items():
            address = s.getsockname()
            address = address[:2] if isinstance(address, tuple) else address
            code = (
                f"import socket\ns = socket.socket({int(s.family)}, socket.SOCK_STREAM)\ns.settimeout(2)\n"
                f"s.connect({address!r})\nprint('connec' + 'ted')"
            )
            out = _run(tool, code)
            assert out.startswith("Error:") and "connected" not in out, (name, out)
            with pytest.raises(BlockingIOError):
                s.accept()  # nothing ever arrived
    finally:
        for s in servers.values():
            s.close()


def test_host_processes_cannot_be_seen_signalled_or_read(tool) -> None:
    victim = subprocess.Popen(["sleep", "60"], env={"SECRET": "hunter2"})
    try:
        pid = victim.pid
        code = SPAWN + (
            "import os, time\n"
            "print('pids', sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n"
            f"spawn('/usr/bin/kill', '-9', '{pid}')\ntime.sleep(0.5)\n"
            f"for f in ('environ', 'mem'):\n    try:\n        print(open('/proc/{pid}/' + f, 'rb').read(64))\n"
            "    except OSError as e:\n        print(f, type(e).__name__)\n"
        )
        out = _run(tool, code)
        assert "environ FileNotFoundError" in out and "mem FileNotFoundError" in out, out
        assert "hunter2" not in out
        seen = [int(p) for p in out.split("pids [")[1].split("]")[0].split(", ")]
        assert max(seen) < 10, out  # only the sandbox's own PID namespace
        assert victim.poll() is None  # the host process lives
    finally:
        victim.kill()
        victim.wait()


@pytest.mark.parametrize("ends", ["returns", "times_out"])
def test_no_process_outlives_the_call(tool, ends) -> None:
    marker = f"{os.getpid()}.{time.time_ns() % 10**6}"
    tail = "while True:\n    pass" if ends == "times_out" else "print('left')"
    code = SPAWN + f"import os\nspawn('/usr/bin/setsid', '/usr/bin/sleep', '{marker}')\nos.setsid()\n{tail}"
    _run(tool, code)
    time.sleep(0.2)
    left = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, text=True).stdout
    assert left == "", f"orphans: {left}"


def test_the_working_directory_is_size_capped(tool) -> None:
    # tmpfs of 4 * max_file_mb: many files each under the file size limit still run out of space
    code = "for i in range(20):\n    open(f'f{i}', 'wb').write(b'0' * 900_000)\nprint('fil' + 'led')"
    out = _run(tool, code)
    assert out.startswith("Error: OSError: [Errno 28] No space left on device"), out


def test_syscalls_code_has_no_business_making_are_refused_by_seccomp(tool) -> None:
    # a fresh interpreter started by fork_exec has no audit hook, so ctypes reaches the kernel directly
    child = (
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "for name, nr in [('ptrace', 101), ('keyctl', 250), ('bpf', 321), ('perf_event_open', 298), "
        "('process_vm_readv', 310), ('unshare', 272), ('mount', 165)]:\n"
        "    ctypes.set_errno(0)\n    r = libc.syscall(nr, 0, 0, 0, 0, 0)\n    print(name, r, ctypes.get_errno())\n"
        "print('getpid', libc.syscall(39))"
    )
    code = SPAWN + f"import os, sys\nos.waitpid(spawn(sys.executable, '-I', '-c', {child!r}), 0)"
    lines = dict(line.split(" ", 1) for line in _run(tool, code).splitlines() if line)
    for name in ("ptrace", "keyctl", "bpf", "perf_event_open", "process_vm_readv", "unshare", "mount"):
        assert lines[name] == "-1 1", (name, lines)  # -1 with errno EPERM (1)
    assert int(lines["getpid"]) > 1  # other syscalls work
