"""A cgroup per python tool call, so process count and memory are capped over all processes of the call.

RLIMIT_NPROC does not do this when arlkit runs as root: the kernel exempts the root user from it whatever
the user namespace, and RLIMIT_AS is per process (6 children of 400 MB each pass a 512 MB limit). Cgroup v1
`pids` and `memory` hierarchies are used where this process may create groups in them; elsewhere the tool
falls back to RLIMIT_NPROC, which bounds an unprivileged user's processes, and memory summed over children is
then bounded only by memory_mb * max_procs (the tool's log line at start says which).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from functools import lru_cache
from pathlib import Path

__all__ = ["CallCgroup", "writable_controllers"]

_V1 = Path("/sys/fs/cgroup")
# joins the shell to each group named in its arguments, then becomes the sandbox: no window outside the group
_JOIN = (
    'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n - 1)); done; exec "$@"'
)


@lru_cache(maxsize=1)
def writable_controllers() -> tuple[str, ...]:
    """The cgroup v1 controllers among pids and memory where a group can be created and removed here."""
    found = []
    for name in ("pids", "memory"):
        probe = _V1 / name / f"arlkit-probe-{os.getpid()}"
        try:
            probe.mkdir()
            probe.rmdir()
        except OSError:
            continue
        found.append(name)
    return tuple(found)


class CallCgroup:
    """Groups capping one call: `wrap` a command to start it inside them; `close` kills what is left.

    Args:
        max_procs: pids.max, every process and thread of the call.
        memory_bytes: memory.limit_in_bytes, the call's resident memory and tmpfs pages together.
    """

    def __init__(self, max_procs: int, memory_bytes: int) -> None:
        name = f"arlkit-{uuid.uuid4().hex[:12]}"
        limits = {"pids": {"pids.max": max_procs}, "memory": {"memory.limit_in_bytes": memory_bytes}}
        self.dirs: list[Path] = []
        for controller in writable_controllers():
            d = _V1 / controller / name
            d.mkdir()
            self.dirs.append(d)
            for file, value in limits[controller].items():
                (d / file).write_text(str(value))

    def wrap(self, command: list[str]) -> list[str]:
        if not self.dirs:
            return command
        procs = [str(d / "cgroup.procs") for d in self.dirs]
        return ["/bin/sh", "-c", _JOIN, "sh", str(len(procs)), *procs, *command]

    def close(self) -> None:
        """Kill any process still in the groups (none should be: the PID namespace died) and remove them."""
        for d in self.dirs:
            for _ in range(50):
                with contextlib.suppress(OSError, ValueError):
                    for pid in (d / "cgroup.procs").read_text().split():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), signal.SIGKILL)
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # busy until the killed processes are reaped
                    time.sleep(0.01)
