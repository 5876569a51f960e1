"""Typed configuration: one frozen, documented pydantic model per component, nested one level.

Defaults live only here. YAML files in `configs/` and dotted command-line overrides (`algo.lr=1e-5`) are merged,
then validated: an unknown key or a bad value fails at load time with the field's dotted name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from arlkit.errors import ArlkitError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoraConfig(_Section):
    """LoRA adapters (peft). With LoRA the KL reference is the base with adapters disabled."""

    rank: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"


class ModelConfig(_Section):
    path: str = "tiny"  # "tiny": the embedded base (built on first use); else a HF model id or local path
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    lora: LoraConfig | None = None  # None: full fine-tuning
    gradient_checkpointing: bool = False


class TaskConfig(_Section):
    name: Literal["toywiki"] = "toywiki"
    seed: int = 0  # world seed; must match the tiny base's world when model.path is "tiny"
    n_people: int = Field(1500, gt=10)
    heldout_frac: float = Field(0.2, gt=0, lt=1)
    top_k: int = Field(2, gt=0)  # documents per search
    max_turns: int = Field(4, gt=0)  # assistant turns per episode
    fmt: Literal["hermes", "tags"] = "tags"  # the tiny base is trained on this format
    # RL questions: "rl" = train people the tiny base's SFT never saw (so memory does not answer them);
    # "train" = all train people. Held-out people are never in either.
    train_split: Literal["train", "rl", "sft"] = "rl"
    n_eval: int = Field(500, ge=0)  # held-out questions per evaluation
    eval_seed: int = 12345


class RolloutConfig(_Section):
    n: int = Field(8, gt=0)  # rollouts per prompt (the GRPO group)
    prompts_per_step: int = Field(16, gt=0)
    temperature: float = Field(1.0, ge=0)  # 0 = greedy
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(48, gt=0)  # per turn
    max_length: int = Field(1024, gt=16)  # whole episode, prompt included
    eval_temperature: float = Field(0.0, ge=0)  # same for base and trained policy; 0 = greedy
    max_batch: int = Field(256, gt=0)  # rows per generation forward


class AlgoConfig(_Section):
    advantage: str = "grpo"
    norm_by_std: bool = True
    policy_loss: str = "ppo_clip"
    clip_low: float = Field(0.2, ge=0)
    clip_high: float = Field(0.28, ge=0)  # clip-higher (DAPO)
    dual_clip: float | None = Field(None, gt=1)
    aggregation: str = "token_mean"
    kl_coef: float = Field(0.0, ge=0)  # KL-to-reference loss term; 0 disables (and skips the reference pass)
    kl_estimator: str = "k3"
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    epochs: int = Field(1, gt=0)  # passes over each rollout batch
    mini_batches: int = Field(1, gt=0)  # optimizer steps per epoch
    micro_batch_size: int = Field(32, gt=0)  # rows per forward (gradient accumulation)
    grad_clip: float = Field(1.0, gt=0)

    @field_validator("advantage", "policy_loss", "aggregation", "kl_estimator")
    @classmethod
    def _registered(cls, name: str, info: Any) -> str:
        """Names of registered functions: checked at load time, not steps into a run (the registries live
        in `arlkit.algos`; every module there is imported so that every registration counts)."""
        from arlkit.algos.registry import import_all_algos

        import_all_algos()
        registry = _registry(info.field_name)
        if name not in registry.names():
            raise ValueError(f"unknown {registry.kind} {name!r}; valid: {', '.join(registry.names())}")
        return name


def _registry(field_name: str) -> Any:
    from arlkit.algos.advantages import ADVANTAGES
    from arlkit.algos.kl import KL_ESTIMATORS
    from arlkit.algos.losses import AGGREGATIONS, POLICY_LOSSES

    return {
        "advantage": ADVANTAGES,
        "policy_loss": POLICY_LOSSES,
        "aggregation": AGGREGATIONS,
        "kl_estimator": KL_ESTIMATORS,
    }[field_name]


class TrainConfig(_Section):
    steps: int = Field(100, ge=0)
    seed: int = 0
    eval_every: int = Field(0, ge=0)  # 0: evaluate only before and after training
    save_every: int = Field(0, ge=0)  # 0: save only the final checkpoint
    run_dir: str = "runs/default"
    n_samples: int = Field(8, ge=0)  # trajectories written to samples.jsonl per logged step
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, gt=0)  # torch CPU threads; None keeps torch's default


class Config(_Section):
    model: ModelConfig = ModelConfig()
    task: TaskConfig = TaskConfig()
    rollout: RolloutConfig = RolloutConfig()
    algo: AlgoConfig = AlgoConfig()
    train: TrainConfig = TrainConfig()


def apply_override(data: dict[str, Any], item: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML (numbers, bools, lists)."""
    if "=" not in item:
        raise ArlkitError(f"override {item!r} must look like section.field=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ArlkitError(f"override {item!r}: {p!r} is not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (or the defaults), apply overrides, validate.

    Raises:
        ArlkitError: missing file, bad YAML, unknown key or bad value (the message names the field).
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ArlkitError(f"config file {str(p)!r} does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ArlkitError(f"config file {str(p)!r} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ArlkitError(f"config file {str(p)!r} must hold a mapping of sections")
    for item in overrides:
        apply_override(data, item)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ArlkitError(_describe(e)) from None


def _describe(e: ValidationError) -> str:
    lines = []
    for err in e.errors():
        field = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown config field {field!r}")
        else:
            msg = err["msg"].removeprefix("Value error, ")  # pydantic's prefix for a validator's ValueError
            lines.append(f"config field {field!r}: {msg} (got {err.get('input')!r})")
    return "invalid config:\n  " + "\n  ".join(lines)
