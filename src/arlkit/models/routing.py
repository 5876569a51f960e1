"""Role-routed policies: DART's two LoRA adapters and the 2-Agent pair of full models (METHODS.md §6).

DART (arXiv 2602.00994): the backbone is frozen; every linear layer of the decoder gets two disjoint LoRA
adapters, θ_r (reasoning) and θ_a (action), and each position uses exactly one: h' = W h + B_u A_u h with
u = ℓ(t), the role of the token whose logits the position computes. That token is c_{p+1} for input position
p, and ℓ(p+1) depends on c_≤p only (METHODS.md §1), so generation can route exactly as training does.

The route of position p is therefore the role of the NEXT token: 1 (action) iff ℓ(p+1) = ACTION (and, with
`answer_adapter="action"`, ANSWER), else 0. Positions whose next token is a prompt or observation token
carry no loss; they use the reasoning adapter — our rule, and the same rule in training and generation
(the prefill of prompts and observations never sees an ACTION next token), which tests check token by token.

The 2-Agent upper bound routes whole models instead of adapters: one model writes reasoning, the other tool
calls, switching at the span boundary. Both read every token (each keeps its own KV cache), and each
position's logits come from the model its route names.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator
from typing import Any

import torch

from arlkit.models.cache_api import CACHE_KWARG, with_cache
from arlkit.trajectory import Role

REASONING_ADAPTER, ACTION_ADAPTER = 0, 1


def routes_from_roles(roles: torch.Tensor, answer_adapter: str = "reasoning") -> torch.Tensor:
    """(B, T) token roles -> (B, T) long routes: route[p] = adapter of the token at p + 1 (0 at the end)."""
    nxt = torch.zeros_like(roles, dtype=torch.long)
    nxt[:, :-1] = token_adapters(roles, answer_adapter)[:, 1:]
    return nxt


def route_of_role(role: int, answer_adapter: str = "reasoning") -> int:
    """The adapter that computes the logits of a token of role `role`."""
    if role == int(Role.ACTION) or (answer_adapter == "action" and role == int(Role.ANSWER)):
        return ACTION_ADAPTER
    return REASONING_ADAPTER


def token_adapters(roles: torch.Tensor, answer_adapter: str = "reasoning") -> torch.Tensor:
    """(B, T) the adapter that computed each token's logits (it ran at the previous position)."""
    action = roles == int(Role.ACTION)
    if answer_adapter == "action":
        action = action | (roles == int(Role.ANSWER))
    return action.long()


def adapter_parameters(model: torch.nn.Module) -> list[list[torch.nn.Parameter]]:
    """[reasoning adapter's parameters, action adapter's parameters] of a DART model."""
    groups: list[list[torch.nn.Parameter]] = [[], []]
    for name, p in model.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:
            groups[int(name.rsplit(".", 1)[1])].append(p)
    return groups


class _RouteState:
    """The routes of the forward in progress, shared by every routed layer of one model."""

    def __init__(self) -> None:
        self.routes: torch.Tensor | None = None  # (B, T) long
        self.disabled = False  # adapters off: the frozen base (DART's KL reference)


class RoutedLoRALinear(torch.nn.Module):
    """A frozen linear layer plus `n` LoRA adapters; each position adds the delta of its routed adapter only.

    Both deltas are computed (rank 8 each: a few % of the layer's cost) and selected per position, which keeps
    shapes static; an adapter's weights receive gradient only from positions routed to it.
    """

    def __init__(self, base: torch.nn.Linear, rank: int, alpha: float, n: int, state: _RouteState):
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.state = state
        self.scaling = alpha / rank
        # one (A, B) pair per adapter, as separate parameters: adapter u is `lora_A.u` / `lora_B.u`
        self.lora_A = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.empty(rank, base.in_features)) for _ in range(n)]
        )
        self.lora_B = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.zeros(base.out_features, rank)) for _ in range(n)]  # B = 0: the base
        )
        for a in self.lora_A:
            torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # peft's default for A

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.state.disabled:
            return out
        routes = self.state.routes
        if routes is None:
            raise RuntimeError("a routed model was called without routes; use `with routing(model, routes)`")
        x = x.to(self.lora_A[0].dtype)
        for u, (a, b) in enumerate(zip(self.lora_A, self.lora_B, strict=True)):
            sel = (routes == u).to(x.dtype)[..., None]  # (B, T, 1)
            delta = (x @ a.T) @ b.T  # (B, T, out)
            out = out + (self.scaling * delta * sel).to(out.dtype)
        return out


def apply_dart(
    model: torch.nn.Module, rank: int = 8, alpha: float = 16.0, n_adapters: int = 2
) -> torch.nn.Module:
    """Freeze `model` and give every linear layer of its decoder `n_adapters` routed LoRA adapters (in place).

    The LM head is left alone, as peft's "all-linear" does. Returns the model, marked `arlkit_routed`.
    """
    model.requires_grad_(False)
    state = _RouteState()
    head = model.get_output_embeddings()
    targets = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear) and mod is not head
    ]
    for name, mod in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, RoutedLoRALinear(mod, rank, alpha, n_adapters, state))
    model.arlkit_route_state = state
    return model


class TwoAgentModel(torch.nn.Module):
    """Two full causal LMs of one architecture; position p's logits come from model `routes[p]`.

    For a KV cache given by a runner, the pair presents itself as one model with twice the layers: the
    reasoning model uses cache layers 0..L−1 and the action model L..2L−1, so one cache (and one prefix copy)
    serves both.
    """

    def __init__(self, reasoner: torch.nn.Module, actor: torch.nn.Module):
        super().__init__()
        a, b = reasoner.config, actor.config
        for key in (
            "num_hidden_layers",
            "num_key_value_heads",
            "hidden_size",
            "num_attention_heads",
            "vocab_size",
        ):
            if getattr(a, key, None) != getattr(b, key, None):
                raise ValueError(f"2-Agent models must share an architecture; {key} differs")
        self.reasoner, self.actor = reasoner, actor
        self.config = copy.copy(a)
        self.config.num_hidden_layers = 2 * a.num_hidden_layers
        self.arlkit_route_state = _RouteState()

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.reasoner.get_input_embeddings()

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.reasoner.get_output_embeddings()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        routes = self.arlkit_route_state.routes
        if routes is None:
            raise RuntimeError("a routed model was called without routes; use `with routing(model, routes)`")
        cache = kwargs.pop(CACHE_KWARG, None)
        second = None if cache is None else _OffsetCache(cache, self.reasoner.config.num_hidden_layers)
        out_r = self.reasoner(*args, **with_cache(cache), **kwargs)
        out_a = self.actor(*args, **with_cache(second), **kwargs)
        keep = out_r.logits.shape[1]
        sel = routes[:, -keep:].to(out_r.logits.device)[..., None] == ACTION_ADAPTER  # (B, T', 1)
        out_r.logits = torch.where(sel, out_a.logits, out_r.logits)
        return out_r  # hidden states, if asked for, are the reasoner's

    def save_pretrained(self, path: Any, **kw: Any) -> None:
        from pathlib import Path

        self.reasoner.save_pretrained(Path(path) / "reasoner", **kw)
        self.actor.save_pretrained(Path(path) / "actor", **kw)


class _OffsetCache:
    """A view of a runner's cache whose layer indices start at `offset` (the 2-Agent action model's layers)."""

    def __init__(self, cache: Any, offset: int):
        self._cache, self._offset = cache, offset

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *a: Any, **k: Any):
        return self._cache.update(key_states, value_states, layer_idx + self._offset, *a, **k)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cache, name)


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The frozen base of a DART model: routed adapters off inside the block (no second copy of weights)."""
    state = model.arlkit_route_state
    previous, state.disabled = state.disabled, True
    try:
        yield model
    finally:
        state.disabled = previous


def is_routed(model: torch.nn.Module) -> bool:
    return hasattr(model, "arlkit_route_state")


@contextlib.contextmanager
def routing(model: torch.nn.Module, routes: torch.Tensor | None) -> Iterator[None]:
    """Set the routes of the forwards inside the block; a no-op for a model that is not routed."""
    state = getattr(model, "arlkit_route_state", None)
    if state is None or routes is None:
        yield
        return
    previous, state.routes = state.routes, routes
    try:
        yield
    finally:
        state.routes = previous


__all__ = [
    "ACTION_ADAPTER",
    "REASONING_ADAPTER",
    "RoutedLoRALinear",
    "TwoAgentModel",
    "adapter_parameters",
    "adapters_disabled",
    "apply_dart",
    "is_routed",
    "route_of_role",
    "routes_from_roles",
    "routing",
    "token_adapters",
]


# --------------------------------------------------------------------------------------------- checkpoints
ROUTING_FILE = "arlkit_routing.json"
ADAPTERS_FILE = "dart_adapters.pt"


def save_routed(model: torch.nn.Module, path: Any, info: dict) -> None:
    """Save a routed policy so `load_routed` rebuilds it: DART as the untouched base (a plain HF folder, so the
    base still loads anywhere) plus its adapters; 2-Agent as two HF folders, `reasoner/` and `actor/`."""
    import json
    from pathlib import Path

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if isinstance(model, TwoAgentModel):
        model.save_pretrained(path)
    else:
        state = model.state_dict()
        base = {k.replace(".base.", "."): v for k, v in state.items() if ".lora_" not in k}
        model.save_pretrained(path, state_dict=base)
        torch.save({k: v for k, v in state.items() if ".lora_" in k}, path / ADAPTERS_FILE)
    (path / ROUTING_FILE).write_text(json.dumps(info, indent=2))


def load_routed(path: Any, dtype: torch.dtype) -> tuple[torch.nn.Module, dict] | None:
    """The routed policy saved at `path` and its routing info, or None when `path` holds a plain model."""
    import json
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not (path / ROUTING_FILE).is_file():
        return None
    info = json.loads((path / ROUTING_FILE).read_text())
    if info["kind"] == "two_agent":
        load = lambda sub: AutoModelForCausalLM.from_pretrained(str(path / sub), dtype=dtype)  # noqa: E731
        return TwoAgentModel(load("reasoner"), load("actor")), info
    model = apply_dart(
        AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype), info["rank"], info["alpha"]
    )
    missing, unexpected = model.load_state_dict(
        torch.load(path / ADAPTERS_FILE, weights_only=True), strict=False
    )
    if unexpected or any(".lora_" in k for k in missing):
        raise ValueError(f"{path / ADAPTERS_FILE} does not match the model's adapters")
    return model, info
