"""The process's peak resident memory, resettable between the stages of one process (recipe stages,
benchmark variants after model loading)."""

from __future__ import annotations

import ctypes
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


def trim_heap() -> bool:
    """Give the heap's free pages back to the OS (glibc's malloc_trim, which also releases free pages in the
    middle of the heap). A step's rollout and update free most of what they allocated, but glibc keeps it
    resident, so the next phase starts higher (`train.trim_heap`: ~0.35 GB lower by step 8 on the SmolLM2
    recipe). Returns False where there is no glibc."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)


def set_mmap_threshold(kib: int) -> bool:
    """Serve allocations of at least `kib` KiB from their own mmap, returned to the OS on free (glibc's
    mallopt). Setting it fixes the threshold: glibc otherwise raises it to the size of the largest block
    freed (up to 32 MiB), after which a step's activations come from the heap and its freed pages stay
    resident. Returns False where there is no glibc (macOS, musl): nothing changes there."""
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(M_MMAP_THRESHOLD, int(kib) * 1024))


def _glibc() -> ctypes.CDLL | None:
    """glibc, whose malloc the two calls above tune; None where the C library is another (macOS, musl)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    # a libc.so.6 without them is not glibc's malloc
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
