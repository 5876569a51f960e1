"""The bubblewrap command line the python tool runs model-written code under (Debian package `bubblewrap`).

What the sandbox sees: read-only binds of /usr (with the merged-/usr symlinks), the interpreter's prefix and
the virtual environment's, the sandbox's own child script and the model's program; a fresh /proc of a new
PID namespace; a minimal /dev; and one writable place, an empty size-capped tmpfs as its working directory.
No other host directory is visible, so no host unix socket can be reached; the new network namespace has
only a down loopback. The code runs as uid 65534 in a new user namespace, with no capabilities, in a new
session (no terminal ioctls into the caller's), and cannot make further user namespaces. `--die-with-parent`
and the PID namespace mean that killing bwrap kills every process the code started.

The uid 65534 inside maps to the uid arlkit runs as; bubblewrap cannot map to another host uid without
privileges, so run arlkit as an unprivileged user where that matters (only read-only binds are visible).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

__all__ = ["CHILD", "WORKDIR", "available", "bwrap_command"]

WORKDIR = "/sandbox"  # the tmpfs the code runs in
CHILD = "/opt/arlkit/sandbox_child.py"  # where the child script is bound
_CHILD_HOST = str(Path(__file__).with_name("sandbox_child.py"))
_MERGED_USR = ("bin", "sbin", "lib", "lib32", "lib64")


def _interpreter_roots() -> list[str]:
    """The folders the interpreter and its packages live in, without ones already under /usr or each other."""
    roots: list[str] = []
    for p in sorted({os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix), sys.prefix}, key=len):
        if not p.startswith("/usr/") and not any(p == r or p.startswith(r + "/") for r in roots):
            roots.append(p)
    return roots


def bwrap_command(
    program: str, tmpfs_bytes: int, command: list[str], seccomp_fd: int | None = None
) -> list[str]:
    """The argv running `command` in the sandbox, with the host file `program` bound read-only as ./main.py
    and tools/sandbox_child.py as CHILD; `tmpfs_bytes` caps the working directory; `seccomp_fd`, an
    inherited descriptor holding a filter (tools/seccomp.py), applies it to everything in the sandbox."""
    cmd = ["bwrap", "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"]
    cmd += ["--unshare-cgroup-try", "--uid", "65534", "--gid", "65534", "--disable-userns"]
    cmd += ["--die-with-parent", "--new-session", "--hostname", "sandbox"]
    cmd += ["--ro-bind", "/usr", "/usr"]
    for name in _MERGED_USR:
        target = Path("/", name)
        if target.is_symlink():
            cmd += ["--symlink", os.readlink(target), str(target)]
    for root in _interpreter_roots():
        cmd += ["--ro-bind", root, root]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--size", str(tmpfs_bytes), "--tmpfs", WORKDIR]
    cmd += ["--ro-bind", _CHILD_HOST, CHILD, "--ro-bind", program, f"{WORKDIR}/main.py", "--chdir", WORKDIR]
    if seccomp_fd is not None:
        cmd += ["--seccomp", str(seccomp_fd)]
    return [*cmd, *command]


@lru_cache(maxsize=1)
def available() -> str | None:
    """None when bubblewrap runs a trivial program here, else why not (checked once per process)."""
    if sys.platform != "linux":
        return f"bubblewrap needs Linux, this is {sys.platform}"
    if shutil.which("bwrap") is None:
        return "the bwrap command is missing (Debian/Ubuntu: apt-get install bubblewrap)"
    cmd = bwrap_command(_CHILD_HOST, 2**20, [sys.executable, "-I", "-c", "print(6 * 7)"])
    try:
        r = subprocess.run(cmd, capture_output=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
    except (OSError, subprocess.SubprocessError) as e:
        return f"bwrap failed to start: {e}"
    if r.returncode != 0 or r.stdout.strip() != b"42":
        return (
            f"bwrap could not run Python (exit {r.returncode}): {r.stderr.decode(errors='replace').strip()}"
        )
    return None
