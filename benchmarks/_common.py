"""Shared pieces of the benchmark scripts: the models they run, a matmul peak, and isolated measurements.

Every measurement runs in a fresh child process, so its peak memory is its own (CPU: peak resident set size;
GPU: torch's peak allocation) and the variants of one run do not share caches or allocator state.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

# Qwen2-0.5B's architecture (random weights are enough for speed); the vocabulary is the tokenizer's.
QWEN2_05B = dict(
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    tie_word_embeddings=True,
)


def matmul_peak_gflops(device: str, dtype: torch.dtype, seconds: float = 1.5) -> float:
    """Best sustained GFLOP/s of square matmuls (n = 512 … 2048) on `device` with the current threads.

    The roofline's denominator: what this machine's BLAS reaches on large, well-shaped products, measured in
    the same run as the throughput it is compared with.
    """
    best = 0.0
    for n in (512, 1024, 2048):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b  # warm-up
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            a @ b
            reps += 1
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start) / 1e9)
    return best


def load_model(spec: str, device: str, dtype: str) -> tuple[torch.nn.Module, Any, Any]:
    """(model, tokenizer, task) for "tiny" (the demo's cached base, built if missing), "qwen2-0.5b" (that
    architecture with random weights and the tiny base's tokenizer) or a local model folder; the task is
    the demo's toywiki world and format."""
    from arlkit.models.loading import DTYPES, load_policy
    from arlkit.models.tiny import TinyRecipe, ensure_base
    from arlkit.tasks import ToyWikiTask

    task = ToyWikiTask()
    if spec not in ("tiny", "qwen2-0.5b"):
        policy = load_policy(Path(spec), dtype, device)
        return policy.model.eval(), policy.tokenizer, task
    base = ensure_base(TinyRecipe(task=task))
    if spec == "tiny":
        policy = load_policy(base, dtype, device)
        return policy.model.eval(), policy.tokenizer, task
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = load_policy(base, device="cpu").tokenizer
    cfg = Qwen2Config(
        vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **QWEN2_05B
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).to(device=device, dtype=DTYPES[dtype]).eval()
    return model, tok, task


def flops_per_token(model: torch.nn.Module, mean_context: float) -> float:
    """Forward FLOPs to produce one token at context length `mean_context`:
    2 × (non-embedding parameters + the output projection d·V) + 4 × layers × (heads · head_dim) × context.

    The first term counts each weight's multiply-add once; the output projection is paid per token even when
    tied to the embedding (which itself is a lookup, not a product). The second is attention's q·kᵀ and p·v
    over the context. Norms, rotary embeddings and softmax are left out (small).
    """
    cfg = model.config
    emb = model.get_input_embeddings().weight.numel()
    dense = sum(p.numel() for p in model.parameters()) - emb
    out = model.get_output_embeddings().weight.numel()
    if model.get_output_embeddings().weight is not model.get_input_embeddings().weight:
        dense -= out  # counted below
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    attn = 4 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim * mean_context
    return 2 * (dense + out) + attn


def measure(fn: Callable[..., dict], *args: Any) -> dict:
    """Run fn(*args) in a fresh process; returns its dict plus `peak_mb` (the child's peak memory)."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_peak_wrapper, (fn, *args))


def _peak_wrapper(fn: Callable[..., dict], *args: Any) -> dict:
    out = fn(*args)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return out


def set_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)
