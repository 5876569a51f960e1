"""bf16 where the hardware multiplies bf16 faster, with float32 weights kept for the optimiser.

Two separate choices, as verl and OpenRLHF make them:
- `train.precision: bf16` runs the trainer's forwards and backwards (update, old/reference log-probs, SFT)
  under `torch.autocast` with bfloat16: matmuls in bf16, weights, gradients and AdamW moments stay float32,
  so small updates are not rounded away. The chunked head casts its logits to float32 before the softmax.
- `rollout.dtype: bfloat16` runs the rollout engine on a bf16 copy of the policy (LoRA adapters merged in),
  refreshed after every update, as a vLLM sampler in bf16 is. The sampler's log-probs then differ from the
  trainer's; `rollout/logprob_diff` reports the mean absolute difference on every step, and the loss uses the
  trainer's recomputed log-probs as π_old, so the ratio is exact at the first mini-batch.
The float32 path is unchanged and stays the default (its engine/trainer parity is tested at 1e-4).

On an Intel Xeon with AMX, a 2048² bf16 matmul ran at ~940 GFLOP/s against ~128 in fp32 (docs/real_model.md
gives this model's figures); on a CPU without bf16 units it can be slower: measure with benchmarks/.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The trainer's autocast context for `train.precision` ("fp32": none)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _plain(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a peft wrapper (the model itself when there is none)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _is_lora(mod: torch.nn.Module) -> bool:
    """A peft LoRA layer: a base layer plus adapters whose delta peft computes."""
    return hasattr(mod, "base_layer") and hasattr(mod, "get_delta_weight")


def _lora_layers(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    """(name, layer) of each LoRA layer whose adapters are not merged into its base weight already."""
    for name, mod in _plain(model).named_modules():
        if _is_lora(mod) and getattr(mod, "merged", False) is False:
            yield name, mod


class SamplerCopy:
    """A plain (adapter-free) copy of the policy in `dtype` for the rollout engine; `refresh` copies the
    policy's current weights in, with its LoRA deltas added (W + B A · scale, peft's own `get_delta_weight`)."""

    def __init__(self, policy_model: torch.nn.Module, dtype: torch.dtype):
        self.model = _strip_lora(copy.deepcopy(_plain(policy_model))).to(dtype).eval()
        self.model.requires_grad_(False)
        self.refresh(policy_model)

    @torch.no_grad()
    def refresh(self, policy_model: torch.nn.Module) -> None:
        target = self.model.state_dict()
        for key, value in merged_state_dict(policy_model).items():
            target[key].copy_(value)


@torch.no_grad()
def merged_state_dict(policy_model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The policy's weights under the plain model's names, each LoRA layer's deltas added to its base weight
    (W + B A · scale, peft's own `get_delta_weight`); the policy is not modified (merging in place and back
    would add float rounding to the trained weights at every call)."""
    deltas = {f"{name}.base_layer.weight": mod for name, mod in _lora_layers(policy_model)}
    out = {}
    for key, value in _plain(policy_model).state_dict().items():
        if "lora_" in key:
            continue
        mod = deltas.get(key)
        if mod is not None:
            value = value + mod.get_delta_weight(mod.active_adapters[0])
        out[key.replace(".base_layer", "")] = value
    return out


def _strip_lora(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with each peft LoRA layer replaced by its base layer (a deep copy's; weights are set by
    refresh)."""
    for name, mod in list(model.named_modules()):
        if _is_lora(mod):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, mod.base_layer)
    return model
