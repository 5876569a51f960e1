"""One process per run folder: an advisory lock (fcntl.flock) on `<run folder>/.lock`.

Two runs in one folder would interleave their metrics and replace each other's checkpoints, and both end
"successfully". The lock is held from the moment a RunDir opens the folder until it is closed or the process
ends (the kernel drops a dead process's lock, so a killed run never leaves the folder locked). Within one
process the lock is counted, not exclusive: the same process may open its own folder twice (a Setup built
for a resume check, a reader of its metrics).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from arlkit.errors import ArlkitError

LOCK_FILE = ".lock"
_held: dict[Path, tuple[int, int]] = {}  # resolved folder -> (file descriptor, times locked in this process)


def lock_folder(folder: Path) -> None:
    """Lock `folder` for this process.

    Raises:
        ArlkitError: another process holds it (the message names that process).
    """
    key = folder.resolve()
    if key in _held:
        fd, count = _held[key]
        _held[key] = (fd, count + 1)
        return
    fd = os.open(key / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ArlkitError(
            f"train.run_dir {str(folder)!r} is in use by another arlkit process (pid {holder}; lock "
            f"{key / LOCK_FILE}): two runs in one folder would interleave their logs and checkpoints. Wait "
            "for it to end, or give this run another train.run_dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[key] = (fd, 1)


def unlock_folder(folder: Path) -> None:
    """Undo one `lock_folder` of this process; the last one releases the lock."""
    key = folder.resolve()
    if key not in _held:
        return
    fd, count = _held.pop(key)
    if count > 1:
        _held[key] = (fd, count - 1)
        return
    os.close(fd)  # closing the descriptor releases the flock
