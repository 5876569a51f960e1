"""Sharded training with torch's FSDP2 (`train.strategy: fsdp`, or an accelerate config whose
`distributed_type` is FSDP): parameters, gradients and optimiser state split across ranks.

The design follows the "hybrid engine" of verl and OpenRLHF: the policy the loop generates, evaluates and
scores with (`Policy.model`) stays a full, unsharded module on every rank, and a second copy, sharded with
`fully_shard` (`Policy.train_model`), is the one the optimiser trains. After every update the trained
tensors are gathered into the full module (`copy_to_rollout`). Why not generate with the sharded module:
FSDP all-gathers a block's weights inside every forward, so every rank would have to run the same number of
forwards, while generation is data-dependent (ranks stop at different lengths and turns). The full module
costs one copy of the weights (in the training dtype) per GPU; AdamW's two moments, the gradients and the
fp32 master weights, which are most of the memory in a replicated run, are sharded.

What the update needs besides (train/update.py):
- Every rank runs the same number of forward/backward passes in each mini-batch (FSDP's all-gathers and
  reduce-scatters are collectives): a rank with fewer token-budgeted micro-batches runs empty ones
  (`empty_backward`, zero gradient).
- Gradients are summed, not averaged (`set_gradient_divide_factor(1.0)`): each rank's loss already carries
  its share of the global mini-batch's normaliser (train/distributed.py), so the sum is the single-process
  gradient.
- Checkpoints gather the optimiser state into one full state dict (a collective; rank 0 writes it) and
  resume slices it back, so a checkpoint does not depend on the number of ranks that wrote it.

Not supported with FSDP (refused at start-up, naming the field): a value head or separate critic, and
role-routed policies (DART, 2-Agent), whose per-adapter `autograd.grad` bypasses FSDP's gradient hooks.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch

from arlkit.errors import ArlkitError

if TYPE_CHECKING:
    from arlkit.config import Config
    from arlkit.train.distributed import Dist


def check_supported(cfg: Config) -> None:
    """Refuse what the sharded update does not handle (module docstring), naming the field."""
    if cfg.critic.kind != "none":
        raise ArlkitError(
            f"critic.kind={cfg.critic.kind!r} is not supported with train.strategy=fsdp; use a critic-free "
            "advantage (grpo, rloo, reinforce_pp, ...) or train.strategy=ddp"
        )
    if cfg.model.routing is not None:
        raise ArlkitError(
            "model.routing (DART, 2-Agent) is not supported with train.strategy=fsdp; use train.strategy=ddp"
        )


def _blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks, sharded one by one so that only one block's full weights exist at a time in
    a forward: the modules whose class the model lists in `_no_split_modules` (Qwen2DecoderLayer, ...)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or ())
    return [m for m in model.modules() if type(m).__name__ in names]


def shard_for_training(model: torch.nn.Module, dist: Dist) -> torch.nn.Module:
    """A copy of `model` sharded over all ranks with `fully_shard`: each block is its own unit, the rest
    (embeddings, final norm, head) the root's. The copy is made before sharding: the original stays full."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    mesh = init_device_mesh(dist.device.type, (dist.world_size,))
    train = copy.deepcopy(model)
    for block in _blocks(train):
        fully_shard(block, mesh=mesh)
    fully_shard(train, mesh=mesh)
    for unit in train.modules():  # each unit reduces its own gradients: set every one, not just the root
        if isinstance(unit, FSDPModule):
            # sum, not average: each rank's loss already is its share of the global loss. Plain SUM
            # collectives (gloo has no PREMUL_SUM, which a divide factor would otherwise use)
            unit.set_gradient_divide_factor(1.0)
            unit.set_force_sum_reduction_for_comms(True)
    return train


def full(x: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (a collective: call it on every rank); a plain tensor as it is."""
    return x.full_tensor() if hasattr(x, "full_tensor") else x


@torch.no_grad()
def copy_to_rollout(train_model: torch.nn.Module, rollout_model: torch.nn.Module) -> None:
    """Gather the trained tensors into the full module (the weights rollouts use). Every rank, same order."""
    dst = dict(rollout_model.named_parameters())
    for name, p in train_model.named_parameters():
        if p.requires_grad:
            dst[name].copy_(full(p))


@torch.no_grad()
def copy_to_shards(rollout_model: torch.nn.Module, train_model: torch.nn.Module) -> None:
    """Inverse of `copy_to_rollout` (resume): each rank keeps its own slice of the full tensors."""
    from torch.distributed.tensor import distribute_tensor

    src = dict(rollout_model.named_parameters())
    for name, p in train_model.named_parameters():
        if p.requires_grad:
            # every rank holds the same full tensor: slice it locally (no scatter from rank 0)
            p.copy_(distribute_tensor(src[name].detach(), p.device_mesh, p.placements, src_data_rank=None))


def empty_backward(train_model: torch.nn.Module, device: torch.device) -> None:
    """A forward and backward of one token with a zero loss: the collectives of a micro-batch this rank does
    not have, contributing a zero gradient."""
    ids = torch.zeros((1, 1), dtype=torch.long, device=device)
    (train_model(input_ids=ids).logits.sum() * 0.0).backward()


def optimiser_state(train_model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimiser's full state dict, keyed by parameter names, on rank 0 (empty elsewhere). Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(train_model, opt, options=opts)


def load_optimiser_state(train_model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    """Load a full optimiser state dict (`optimiser_state`) into this rank's shards. Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(train_model, opt, state, options=StateDictOptions(full_state_dict=True))
