"""train/memory.py: the peak-RSS probe and glibc's mmap threshold (train.mmap_threshold_kb)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from arlkit.config import load_config
from arlkit.train.memory import peak_rss_mb, reset_peak_rss, set_mmap_threshold


def _rss_mb() -> float:
    status = Path("/proc/self/status").read_text().splitlines()
    line = next(x for x in status if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc are Linux's")
def test_with_a_fixed_threshold_a_freed_tensor_goes_back_to_the_os() -> None:
    torch.ones(6 * 2**20).sum()  # a freed 24 MiB block slides glibc's threshold up to 24 MiB
    assert set_mmap_threshold(128)  # and this fixes it again
    reset_peak_rss()
    before = _rss_mb()
    t = torch.ones(4 * 2**20)  # 16 MiB, below glibc's highest sliding threshold (32 MiB)
    grown = _rss_mb()
    del t
    assert grown - before > 12 and _rss_mb() - before < 4  # returned, not kept in the heap
    assert peak_rss_mb() >= grown - 1


def test_the_config_field_is_validated() -> None:
    assert load_config(None, ["train.mmap_threshold_kb=128"]).train.mmap_threshold_kb == 128
    with pytest.raises(Exception, match="mmap_threshold_kb"):
        load_config(None, ["train.mmap_threshold_kb=0"])
