"""Critics for PPO (METHODS.md §2): a separate value model or a value head on the policy.

Values are aligned like logprobs (models/forward.py): entry t is V(c_<t), the value of the state in which
token t is generated, read from the hidden state at position t − 1.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForTokenClassification

from arlkit.errors import ArlkitError
from arlkit.models.forward import shift_values
from arlkit.models.loading import resolve_model_source

VALUE_HEAD_FILE = "value_head.pt"


class ValueHead(torch.nn.Module):
    """A linear value head on the policy's last hidden states; zero-initialised so V starts at 0."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: (B, T, H) -> aligned values (B, T)."""
        return shift_values(self.linear(hidden.float()).squeeze(-1))

    def save(self, folder: Path) -> None:
        torch.save(self.state_dict(), Path(folder) / VALUE_HEAD_FILE)


class SeparateCritic(torch.nn.Module):
    """A token-classification model with one output (verl's critic): backbone + linear `score` head."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> aligned values (B, T)."""
        pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=pos, use_cache=False
        )
        return shift_values(out.logits.float().squeeze(-1))

    def save(self, folder: Path) -> None:
        self.model.save_pretrained(folder)


def load_critic(path: str | Path, device: torch.device | str, dtype: torch.dtype) -> SeparateCritic:
    """A critic initialised from a causal LM checkpoint: its backbone, a fresh zero-initialised score head.

    Raises:
        ArlkitError: the path does not hold a model transformers can load.
    """
    path = resolve_model_source(path, field="critic.path")
    try:
        config = AutoConfig.from_pretrained(str(path), num_labels=1, classifier_dropout=0.0)
        model = AutoModelForTokenClassification.from_pretrained(str(path), config=config, dtype=dtype)
    except Exception as e:  # transformers raises many types; the user needs the path and the cause
        raise ArlkitError(
            f"could not load a critic from {str(path)!r} (critic.path or model.path): {e}"
        ) from None
    torch.nn.init.zeros_(model.score.weight)
    if model.score.bias is not None:
        torch.nn.init.zeros_(model.score.bias)
    return SeparateCritic(model).to(device)
