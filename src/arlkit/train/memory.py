"""The process's peak resident memory, resettable between the stages of one process (recipe stages,
benchmark variants after model loading)."""

from __future__ import annotations

import gc
import resource
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")


def peak_rss_mb() -> float:
    """Peak resident set size in MB since start or the last `reset_peak_rss`: VmHWM on Linux; elsewhere the
    process's peak (ru_maxrss: KiB on Linux, bytes on macOS), which cannot be reset."""
    if _STATUS.is_file():
        line = next(x for x in _STATUS.read_text().splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def reset_peak_rss() -> float:
    """Start a new peak (Linux: `5` into /proc/self/clear_refs); returns the peak so far, in MB."""
    gc.collect()
    before = peak_rss_mb()
    if _STATUS.is_file():
        Path("/proc/self/clear_refs").write_text("5")
    return before
