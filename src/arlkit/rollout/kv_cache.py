"""A pool of preallocated KV-cache slots, one episode per slot, for the continuous-batching engine.

Each layer holds keys and values of shape (S, H_kv, L, D): S slots, L positions. A forward first `bind`s a
`Layout` (which slot each batch row uses, where its new tokens go, how many positions to read); the model's
attention layers then call `update` through transformers' `Cache` interface, which writes the new keys and
values at their positions and returns each row's key/value window. The 4D mask built by `window_mask` hides
what a row has not reached, including stale entries left by an earlier tenant of the slot.

Why a `Cache` subclass rather than our own loop over the decoder layers: the model's own forward runs, so LoRA
adapters (peft wraps the Linear modules) and model details (qkv bias, rope scaling) apply unchanged, for any
transformers decoder that uses the `Cache` interface (Qwen2, Llama, Mistral, ...). transformers passes a 4D
attention mask through as-is (`masking_utils._preprocess_mask_arguments`), and with one it reads nothing else
from the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache

from arlkit.errors import ArlkitError


@dataclass(frozen=True)
class Layout:
    """Where one forward's rows live in the pool. B rows, T new tokens per row (right-padded).

    rows_are_prefix: the batch rows are slots 0..B-1 in order, so the pool is read through a view (no copy).
    """

    slots: torch.Tensor  # (B,) long: the slot of each row
    write_slot: torch.Tensor  # (M,) long: slot of each new token that is written (padding is not)
    write_pos: torch.Tensor  # (M,) long: its position
    valid: torch.Tensor | None  # (B, T) bool: which new tokens are real; None when all are
    kv_len: int  # positions read per row (the mask's last dimension)
    rows_are_prefix: bool


def model_dims(model: torch.nn.Module) -> tuple[int, int, int]:
    """(layers, kv heads, head dim) of a transformers decoder (or a peft wrapper of one).

    Raises:
        ArlkitError: the model's attention cannot take the engine's 4D mask, or it has sliding-window layers.
    """
    cfg = model.config
    impl = getattr(cfg, "_attn_implementation", "eager")
    if impl not in ("eager", "sdpa"):
        raise ArlkitError(
            f"rollout.backend 'engine' needs attn_implementation 'sdpa' or 'eager' (it passes a 4D mask), "
            f"the model uses {impl!r}; load it with one of those or use rollout.backend=hf"
        )
    if "sliding_attention" in (getattr(cfg, "layer_types", None) or ()):
        raise ArlkitError(
            "rollout.backend 'engine' does not support sliding-window layers; use rollout.backend=hf"
        )
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    return cfg.num_hidden_layers, n_kv, head_dim


class SlotCache(Cache):
    """Keys and values of S slots × L positions for every layer, allocated once and reused across runs."""

    def __init__(
        self,
        n_layers: int,
        n_slots: int,
        max_len: int,
        n_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ):
        super().__init__(layers=[])
        shape = (n_slots, n_kv_heads, max_len, head_dim)
        # zeros, not empty: masked positions still enter q·k and p·v (times 0), so they must be finite
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.n_slots, self.max_len = n_slots, max_len
        self.layout: Layout | None = None

    def grow(self, max_len: int) -> None:
        """Extend every slot to `max_len` positions, keeping what is cached (amortised by doubling callers)."""
        for pools in (self.keys, self.values):
            for i, old in enumerate(pools):
                new = old.new_zeros((*old.shape[:2], max_len, old.shape[3]))
                new[:, :, : self.max_len] = old
                pools[i] = new
        self.max_len = max_len

    def bind(self, layout: Layout) -> None:
        self.layout = layout

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new keys/values (B, H_kv, T, D); return the rows' windows (B, H_kv, kv_len, D)."""
        lay = self.layout
        assert lay is not None, "SlotCache.update before bind"
        out = []
        for pool, new in ((self.keys[layer_idx], key_states), (self.values[layer_idx], value_states)):
            new = new.transpose(1, 2)  # (B, T, H_kv, D)
            new = new[lay.valid] if lay.valid is not None else new.flatten(0, 1)  # (M, H_kv, D)
            pool[lay.write_slot, :, lay.write_pos] = new.to(pool.dtype)
            window = pool[:, :, : lay.kv_len]  # a view
            if lay.rows_are_prefix:
                out.append(window[: lay.slots.shape[0]])
            else:
                out.append(window.index_select(0, lay.slots))  # copies only the rows' windows
        return out[0], out[1]

    def copy_prefix(self, src: int, dst: int, n: int) -> None:
        """Slot `dst` takes the first `n` positions of slot `src` (a shared prefix: one prefill serves both)."""
        for pool in (*self.keys, *self.values):
            pool[dst, :, :n] = pool[src, :, :n]


def window_mask(q_pos: torch.Tensor, kv_len: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive 4D mask: query at position p sees keys 0..p of its own slot. q_pos: (B, T) -> (B, 1, T, kv_len).

    Additive (0 / dtype min) rather than boolean so that eager and sdpa attention read it alike; the minimum,
    not -inf, keeps a row finite even if it saw nothing.
    """
    keys = torch.arange(kv_len, device=q_pos.device)
    visible = keys[None, None, :] <= q_pos[:, :, None]  # (B, T, kv_len)
    mask = torch.zeros(visible.shape, dtype=dtype, device=q_pos.device)
    mask.masked_fill_(~visible, torch.finfo(dtype).min)
    return mask[:, None]
