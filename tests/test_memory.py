"""train/memory.py: the peak-RSS probe and glibc's mmap threshold (train.mmap_threshold_kb)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from arlkit.config import load_config

PROBE = """
import json, torch
from pathlib import Path
from arlkit.train.memory import peak_rss_mb, reset_peak_rss, set_mmap_threshold

def rss():
    status = Path("/proc/self/status").read_text().splitlines()
    return int(next(x for x in status if x.startswith("VmRSS:")).split()[1]) / 1024

torch.ones(6 * 2**20).sum()  # a freed 24 MiB block slides glibc's threshold up to 24 MiB
fixed = set_mmap_threshold(128)  # and this fixes it again
reset_peak_rss()
before = rss()
t = torch.ones(4 * 2**20)  # 16 MiB, below the slid threshold
grown = rss()
del t
print(json.dumps({"fixed": fixed, "grown": grown - before, "kept": rss() - before, "peak": peak_rss_mb() - grown}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc are Linux's")
def test_with_a_fixed_threshold_a_freed_tensor_goes_back_to_the_os() -> None:
    """In a fresh process (a long-lived one serves the block from free heap chunks it already holds)."""
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["fixed"] and got["grown"] > 12  # the block was mapped for itself
    assert got["kept"] < 4  # and given back when freed, not kept in the heap
    assert got["peak"] >= -1  # the peak probe saw it


def test_the_config_field_is_validated() -> None:
    assert load_config(None, ["train.mmap_threshold_kb=128"]).train.mmap_threshold_kb == 128
    with pytest.raises(Exception, match="mmap_threshold_kb"):
        load_config(None, ["train.mmap_threshold_kb=0"])
