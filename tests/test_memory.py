"""train/memory.py: the peak-RSS probe, glibc's mmap threshold (train.mmap_threshold_kb) and heap trimming."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from arlkit.config import load_config

RSS = """
from pathlib import Path

def rss():
    status = Path("/proc/self/status").read_text().splitlines()
    return int(next(x for x in status if x.startswith("VmRSS:")).split()[1]) / 1024
"""


def _probe(code: str, env: dict[str, str] | None = None) -> dict:
    """Run `code` (with `rss()` defined) in a fresh process; the JSON it prints last. A long-lived process,
    such as pytest's, serves new blocks from heap chunks it already holds, so RSS would not move."""
    out = subprocess.run(
        [sys.executable, "-c", RSS + code], capture_output=True, text=True, check=True, env=env
    )
    return json.loads(out.stdout.splitlines()[-1])


PROBE = """
import json, torch
from arlkit.train.memory import peak_rss_mb, reset_peak_rss, set_mmap_threshold

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
    got = _probe(PROBE)
    assert got["fixed"] and got["grown"] > 12  # the block was mapped for itself
    assert got["kept"] < 4  # and given back when freed, not kept in the heap
    assert got["peak"] >= -1  # the peak probe saw it


TRIM_PROBE = """
import json, torch
from arlkit.train.memory import trim_heap

torch.ones(6 * 2**20).sum()  # a freed 24 MiB block slides glibc's threshold up to 24 MiB
before = rss()
blocks = [torch.ones(2**18) for _ in range(200)]  # 200 MiB in 1 MiB tensors, now from the heap
keep = blocks[-1]  # the heap's top chunk stays in use: only a trim in the middle can give memory back
del blocks
kept = rss() - before
trimmed = trim_heap()
print(json.dumps({"kept": kept, "trimmed": trimmed, "after": rss() - before}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc are Linux's")
def test_trimming_gives_freed_heap_pages_back() -> None:
    """What a step frees stays resident in glibc's heap until trimmed (the loop trims after each phase)."""
    got = _probe(TRIM_PROBE)
    assert got["kept"] > 150  # freed, but resident
    assert got["trimmed"] and got["after"] < 20


KERNEL_PROBE = """
import json, os
import arlkit  # sets the kernel caches' capacity unless the environment has one
import torch
from arlkit.train.memory import trim_heap

w = torch.randn(1536, 576, dtype=torch.bfloat16)  # SmolLM2's MLP weight
before = rss()
for rows in range(100, 600):  # a new shape every time, as packed micro-batches are
    x = torch.randn(rows, 576, dtype=torch.bfloat16, requires_grad=True)
    torch.nn.functional.linear(x, w).sum().backward()
trim_heap()
print(json.dumps({"caps": [os.environ[k] for k in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")],
                  "grown": rss() - before}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_importing_arlkit_bounds_the_cpu_kernel_caches() -> None:
    """oneDNN and ideep keep a compiled kernel per matmul shape, 1,024 of each by default: arlkit's 256 keep
    a run of ever-new shapes from growing without bound, and an exported value still wins."""
    got = {}
    for name, caps in (("arlkit", None), ("exported", "1024")):
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")
        }
        if caps:
            env |= {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": caps, "LRU_CACHE_CAPACITY": caps}
        got[name] = _probe(KERNEL_PROBE, env)
    assert got["arlkit"]["caps"] == ["256", "256"] and got["exported"]["caps"] == ["1024", "1024"]
    assert got["arlkit"]["grown"] < got["exported"]["grown"] - 150


def test_the_config_fields_are_validated() -> None:
    assert load_config(None, ["train.mmap_threshold_kb=128"]).train.mmap_threshold_kb == 128
    assert load_config(None, ["train.trim_heap=true"]).train.trim_heap is True
    assert load_config(None, []).train.trim_heap is False  # off by default: the tiny demo ran slower with it
    assert (
        load_config(str(Path(__file__).parents[1] / "configs" / "smollm2_toywiki.yaml"), []).train.trim_heap
        is True
    )
    with pytest.raises(Exception, match="mmap_threshold_kb"):
        load_config(None, ["train.mmap_threshold_kb=0"])
