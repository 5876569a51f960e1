"""The Python entry points: `arlkit.train(config, task=MyTask)` and `arlkit.sft(...)` run what `arlkit train`
and `arlkit sft` run, from a notebook.

A task class handed over here need not be importable by name (a notebook's `__main__`): it is registered for
this process under `module:QualName`, which the run folder's config.yaml records, so the same call with
`resume=True` continues the run.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console

from arlkit.config import Config, apply_override, describe_errors, load_config
from arlkit.errors import ArlkitError


def load(
    config: str | Path | Mapping[str, Any] | Config | None = None,
    *,
    task: Any = None,
    overrides: Sequence[str] = (),
) -> Config:
    """The run's Config from a YAML path, a dict of sections, a Config or the defaults, plus dotted
    `overrides`; `task` (a task class with a `config_model`) replaces `task.name`, keeping the section's
    other fields.

    Raises:
        ArlkitError: an unknown field or bad value (named), or a task class without a `config_model`.
    """
    overrides = list(overrides)
    if task is not None:
        from arlkit.tasks.resolve import register_local

        overrides.append(f"task.name={register_local(task)}")
    if config is None or isinstance(config, str | Path):
        return load_config(config, overrides)
    data = config.model_dump() if isinstance(config, Config) else copy.deepcopy(dict(config))
    for item in overrides:
        apply_override(data, item)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ArlkitError("invalid config:\n  " + "\n  ".join(describe_errors(e))) from None


def train(
    config: str | Path | Mapping[str, Any] | Config | None = None,
    *,
    task: Any = None,
    overrides: Sequence[str] = (),
    resume: bool = False,
    overwrite: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    """Train as `arlkit train` does (see `load` for `config`, `task` and `overrides`); returns the summary
    written to summary.json."""
    from arlkit.train.loop import train as run

    return run(load(config, task=task, overrides=overrides), console, resume=resume, overwrite=overwrite)


def sft(
    config: str | Path | Mapping[str, Any] | Config | None = None,
    *,
    task: Any = None,
    overrides: Sequence[str] = (),
    console: Console | None = None,
) -> dict[str, Any]:
    """Fine-tune on the task's scripted demonstrations as `arlkit sft` does (the task defines
    `demo_strategies` and `demo_actions(row, strategy)`); returns the summary written to summary.json."""
    from arlkit.train.sft_run import run_sft

    return run_sft(load(config, task=task, overrides=overrides), console)
