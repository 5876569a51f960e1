"""Loading the policy (transformers), optional LoRA (peft), and the KL reference.

With LoRA the reference is the same model with adapters disabled, so no second copy of the weights exists;
with full fine-tuning a frozen copy is made only when a KL term needs it (METHODS.md §3).
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from arlkit.errors import ArlkitError
from arlkit.models.chat_template import ensure_tool_template
from arlkit.models.delimiters import add_delimiter_tokens, split_delimiters
from arlkit.models.gguf import ensure_converted, gguf_source
from arlkit.models.routing import TwoAgentModel, adapters_disabled, apply_dart, load_routed, routes_from_roles

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Policy:
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    ref_model: torch.nn.Module | None = None  # frozen copy (full fine-tuning with KL only)
    lora: bool = False
    critic: torch.nn.Module | None = None  # a separate critic (models/value.py SeparateCritic)
    value_head: torch.nn.Module | None = None  # a value head on the policy's hidden states
    routing: dict | None = None  # a role-routed policy's settings (kind, answer_adapter, gradients, ...)
    # FSDP (train/fsdp.py): the sharded copy the optimiser trains; `model` then stays the full copy that
    # rollouts, evaluation and scoring use, refreshed after every update
    train_model: torch.nn.Module | None = None

    @contextlib.contextmanager
    def reference(self) -> Iterator[torch.nn.Module]:
        """The KL reference model: adapters disabled under LoRA, else the frozen copy."""
        if self.lora:
            with self.model.disable_adapter():
                yield self.model
        elif self.routing is not None and self.routing["kind"] == "dart":
            with adapters_disabled(self.model):
                yield self.model
        elif self.ref_model is not None:
            yield self.ref_model
        else:
            raise RuntimeError("no reference model: load the policy with need_reference=True")

    @property
    def trained(self) -> torch.nn.Module:
        """The module the update runs forward and backward through."""
        return self.model if self.train_model is None else self.train_model

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The actor optimiser's parameters: the policy's trainable weights (the sharded copy's under FSDP)
        and its value head, if any."""
        params = [p for p in self.trained.parameters() if p.requires_grad]
        if self.value_head is not None:
            params += list(self.value_head.parameters())
        return params


def policy_routes(policy: Policy, roles: torch.Tensor) -> torch.Tensor | None:
    """(B, T) routes of a routed policy for a batch with these token roles; None for a plain policy."""
    if policy.routing is None:
        return None
    return routes_from_roles(roles, policy.routing.get("answer_adapter", "reasoning"))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ArlkitError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def resolve_model_source(path: str | Path, gguf_file: str | None = None, field: str = "model.path") -> str:
    """What transformers loads for a model path: a GGUF source (a .gguf file, a folder and `gguf_file`, the
    alias "smollm2") is converted once to a cached Hugging Face folder (models/gguf.py), whose path is
    returned; anything else (a folder, a Hugging Face id) is returned as given. Every reader of a model path
    goes through here, so the rest of arlkit only sees folders and ids.

    Raises:
        ArlkitError: a GGUF source that is missing, unreadable or of an architecture transformers cannot load.
    """
    file = gguf_source(path, gguf_file, field)
    return str(path) if file is None else str(ensure_converted(file))


def check_local_path(path: str | Path, field: str = "model.path", needs: str | None = None) -> None:
    """Fail fast on a local path that cannot hold a model, where transformers would report a hub error.

    A path counts as local when it starts with '/', '.' or '~' or exists; anything else may be a Hugging
    Face id ("org/name") and is left to transformers. ``needs``: a file the folder must hold.
    """
    text = str(path)
    local = Path(text).expanduser()
    if not (text.startswith(("/", ".", "~")) or local.exists()):
        return
    if not local.exists():
        raise ArlkitError(
            f"{field} {text!r} does not exist; give a folder written by save_pretrained or a Hugging Face "
            "model id such as Qwen/Qwen2.5-3B-Instruct"
        )
    if not local.is_dir():
        raise ArlkitError(f"{field} {text!r} is a file; give the folder that holds it (config.json, weights)")
    if needs and not (local / needs).is_file():
        found = ", ".join(sorted(p.name for p in local.iterdir())[:8]) or "nothing"
        raise ArlkitError(
            f"{field} {text!r} holds no {needs}, so it is not a model saved with save_pretrained "
            f"(it holds: {found})"
        )


def load_tokenizer(
    path: str | Path, field: str = "model.path", gguf_file: str | None = None
) -> PreTrainedTokenizerBase:
    """The model's tokenizer, with its own chat template when that template can run tool episodes
    (Qwen2.5-style Hermes tool calls), else arlkit's ChatML template with tools (models/chat_template.py)."""
    source = resolve_model_source(path, gguf_file, field)
    check_local_path(source, field)
    try:
        tok = AutoTokenizer.from_pretrained(source)
    except Exception as e:  # transformers raises many types; the user needs the path and the cause
        raise ArlkitError(f"could not load a tokenizer from {field} {str(path)!r}: {e}") from None
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise ArlkitError(
                f"the tokenizer of {field} {str(path)!r} has neither a pad nor an eos token, so batches cannot "
                "be padded and generation cannot stop: set eos_token (and pad_token) in its "
                "tokenizer_config.json"
            )
        tok.pad_token = tok.eos_token  # many causal LMs ship without a pad token
    ensure_tool_template(tok)
    return tok


def load_policy(
    path: str | Path,
    dtype: str = "float32",
    device: torch.device | str = "cpu",
    lora: dict | None = None,
    need_reference: bool = False,
    gradient_checkpointing: bool = False,
    routing: dict | None = None,
    gguf_file: str | None = None,
    add_delimiters: bool = False,
) -> Policy:
    """Load a causal LM and its tokenizer from a HF id, a local folder or a GGUF source (`gguf_file`: a file
    in the folder `path`; see resolve_model_source), optionally wrapping it in LoRA or
    making it role-routed (`routing`: RoutingConfig fields). A folder saved from a routed policy reloads as one.

    `lora` holds peft LoraConfig fields (r, lora_alpha, lora_dropout, target_modules). `add_delimiters`: add
    the tool-call and answer delimiters the tokenizer splits as single tokens (models/delimiters.py).

    Raises:
        ArlkitError: the path does not hold a loadable model or tokenizer.
    """
    path = resolve_model_source(path, gguf_file)
    check_local_path(path, needs=None if lora_checkpoint_base(path) else "config.json")
    tokenizer = load_tokenizer(path)
    saved = load_routed(path, DTYPES[dtype]) if Path(str(path)).is_dir() else None
    if saved is not None or routing is not None:
        model, info = saved or (_routed_model(path, dtype, routing), routing)
        model.to(device)
        ref = _frozen_copy(model) if need_reference and info["kind"] == "two_agent" else None
        return Policy(model=model, tokenizer=tokenizer, ref_model=ref, routing=info)
    model = _from_pretrained(path, dtype)
    if add_delimiters and split_delimiters(tokenizer):
        if lora is not None:
            raise ArlkitError(
                f"model.add_delimiter_tokens with model.lora: {path} splits the delimiters, and LoRA adapters "
                "would neither train nor save the new embedding rows. Add them in a full fine-tuning stage "
                "first (configs/smollm2_toywiki.yaml's SFT does), or set one of the two off"
            )
        add_delimiter_tokens(model, tokenizer)
    model.to(device)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        # Stacked, not merged: fresh adapters train on the model as loaded (a LoRA checkpoint's own adapters
        # merged in, see `_from_pretrained`), and the saved adapter_config.json names the loaded folder itself,
        # absolute, as their base. Checkpoints stay adapter-sized, the KL reference (adapters disabled) is the
        # policy the run started from, and a reload merges the chain link by link (docs/real_model.md).
        base_name = model.name_or_path
        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora))
        model.peft_config["default"].base_model_name_or_path = base_name
        return Policy(model=model, tokenizer=tokenizer, lora=True)
    ref = _frozen_copy(model) if need_reference else None
    return Policy(model=model, tokenizer=tokenizer, ref_model=ref)


def lora_checkpoint_base(path: str | Path) -> str | None:
    """The base model of a LoRA checkpoint (a folder of adapters only, as a run with `model.lora` saves), or
    None when `path` is not one."""
    p = Path(str(path)).expanduser()
    if not (p / "adapter_config.json").is_file() or (p / "config.json").is_file():
        return None
    return json.loads((p / "adapter_config.json").read_text()).get("base_model_name_or_path")


def _from_pretrained(path: str | Path, dtype: str, field: str = "model.path") -> torch.nn.Module:
    """A causal LM whose `name_or_path` is the absolute path of the folder it came from (peft writes that name
    into the adapter_config.json of LoRA adapters trained on it, so they reload from any working directory).

    A LoRA checkpoint loads as its base with the adapters merged (evaluation and analyses of LoRA runs read the
    policy that training produced); a chain of them (RL adapters whose base is a LoRA SFT checkpoint) merges
    link by link, the first base first. The merged model is a plain one, trainable in full like any other.
    """
    local = Path(str(path)).expanduser()
    name = str(local.resolve()) if local.exists() else str(path)  # else a Hugging Face id
    base = lora_checkpoint_base(path)
    if base is not None:
        from peft import PeftModel

        model = _from_pretrained(base, dtype, f"{field} (the base named in {path}/adapter_config.json)")
        model = PeftModel.from_pretrained(model, name).merge_and_unload()
        model.requires_grad_(True)  # peft froze the base for its adapters; a full fine-tune trains it all
        model.name_or_path = model.config.name_or_path = name  # this folder is the next link's base
        return model
    try:
        return AutoModelForCausalLM.from_pretrained(name, dtype=DTYPES[dtype])
    except Exception as e:  # transformers raises many types; the user needs the path and the cause
        raise ArlkitError(f"could not load a causal LM from {field} {str(path)!r}: {e}") from None


def _routed_model(path: str | Path, dtype: str, routing: dict) -> torch.nn.Module:
    """A new routed policy from a plain checkpoint: DART adapters on it, or it and an action model."""
    model = _from_pretrained(path, dtype)
    if routing["kind"] == "dart":
        return apply_dart(model, routing["rank"], routing["alpha"])
    action_path = routing.get("action_model_path")
    actor = _from_pretrained(
        resolve_model_source(action_path, field="model.routing.action_model_path") if action_path else path,
        dtype,
        "model.routing.action_model_path",
    )
    try:
        return TwoAgentModel(model, actor)
    except ValueError as e:
        raise ArlkitError(f"model.routing.action_model_path: {e}") from None


def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    return ref
