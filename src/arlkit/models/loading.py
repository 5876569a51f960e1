"""Loading the policy (transformers), optional LoRA (peft), and the KL reference.

With LoRA the reference is the same model with adapters disabled, so no second copy of the weights exists;
with full fine-tuning a frozen copy is made only when a KL term needs it (METHODS.md §3).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from arlkit.errors import ArlkitError
from arlkit.models.chat_template import ensure_tool_template

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Policy:
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    ref_model: torch.nn.Module | None = None  # frozen copy (full fine-tuning with KL only)
    lora: bool = False
    critic: torch.nn.Module | None = None  # a separate critic (models/value.py SeparateCritic)
    value_head: torch.nn.Module | None = None  # a value head on the policy's hidden states

    @contextlib.contextmanager
    def reference(self) -> Iterator[torch.nn.Module]:
        """The KL reference model: adapters disabled under LoRA, else the frozen copy."""
        if self.lora:
            with self.model.disable_adapter():
                yield self.model
        elif self.ref_model is not None:
            yield self.ref_model
        else:
            raise RuntimeError("no reference model: load the policy with need_reference=True")

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The actor optimiser's parameters: the policy's trainable weights and its value head, if any."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.value_head is not None:
            params += list(self.value_head.parameters())
        return params


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ArlkitError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The model's tokenizer, with its own chat template when that template can run tool episodes
    (Qwen2.5-style Hermes tool calls), else arlkit's ChatML template with tools (models/chat_template.py)."""
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # transformers raises many types; the user needs the path and the cause
        raise ArlkitError(f"could not load a tokenizer from model.path {str(path)!r}: {e}") from None
    if tok.pad_token_id is None:
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
) -> Policy:
    """Load a causal LM and its tokenizer from a HF id or local folder, optionally wrapping it in LoRA.

    `lora` holds peft LoraConfig fields (r, lora_alpha, lora_dropout, target_modules).

    Raises:
        ArlkitError: the path does not hold a loadable model or tokenizer.
    """
    tokenizer = load_tokenizer(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=DTYPES[dtype])
    except Exception as e:
        raise ArlkitError(f"could not load a causal LM from model.path {str(path)!r}: {e}") from None
    model.to(device)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora))
        return Policy(model=model, tokenizer=tokenizer, lora=True)
    ref = None
    if need_reference:
        ref = copy.deepcopy(model).eval()
        ref.requires_grad_(False)
    return Policy(model=model, tokenizer=tokenizer, ref_model=ref)
