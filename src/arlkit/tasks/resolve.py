"""From `task.name` to a task: find the task's entry, validate the section with its config model, build it.

A task *entry* is what a name stands for: a class (or any callable) with a `config_model` attribute, a
subclass of `arlkit.TaskConfig`; calling it with the validated section (or its `from_config`, for the
built-in dataclasses) gives the task. A name is looked up, in order, among the entries registered in this
process (the built-ins, `arlkit.train(task=...)`), the `arlkit.tasks` entry-point group of installed
packages, and as an import path `package.module:attribute`. The built-in tasks take the same path as a
user's, so every command, `--resume` and each rank of a multi-process launch find a task the same way.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel, ValidationError

from arlkit.config import TaskConfig, describe_errors
from arlkit.errors import ArlkitError
from arlkit.tasks.base import TASKS, Task

ENTRY_POINT_GROUP = "arlkit.tasks"
DEFAULT_TASK = "toywiki"  # a `task` section without a name: the embedded default
# entries handed over in this process (`arlkit.train(task=...)`); a notebook cell run again replaces its class
_LOCAL: dict[str, Any] = {}


def resolve_task(name: str) -> Any:
    """The task entry `name` stands for (see the module docstring for where it is looked up).

    Raises:
        ArlkitError: the name is none of these, its module does not import, or the object is not an entry.
    """
    if name in _LOCAL:
        return _LOCAL[name]
    if name in TASKS.names():
        return TASKS.get(name)
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if found:
        return _checked(_load(found[0].value, f"entry point {name!r} ({found[0].value})"), name)
    if ":" in name:
        return _checked(_load(name, f"task {name!r}"), name)
    plugins = sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})
    raise ArlkitError(
        f"config field 'task.name': unknown task {name!r}; valid: {', '.join([*TASKS.names(), *plugins])}; "
        "or an import path such as my_pkg.my_module:MyTask"
    )


def _load(path: str, what: str) -> Any:
    """The attribute `module:attr` names, importing the module; the working directory is importable, as for
    `python -m`, so a task module beside the config runs without being installed."""
    module_name, _, attr = path.partition(":")
    cwd_importable()
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ArlkitError(f"{what}: module {module_name!r} does not import ({e})") from None
    obj: Any = module
    for part in attr.split(".") if attr else []:
        if not hasattr(obj, part):
            raise ArlkitError(f"{what}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def cwd_importable() -> None:
    """Put the working directory on sys.path (as `python -m` does, and the `arlkit` script does not)."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def _checked(entry: Any, name: str) -> Any:
    model = getattr(entry, "config_model", None)
    if not (isinstance(model, type) and issubclass(model, TaskConfig)):
        raise ArlkitError(
            f"task {name!r}: {entry!r} needs a `config_model` attribute, a subclass of arlkit.TaskConfig "
            "(which may add no field of its own)"
        )
    if not callable(getattr(entry, "from_config", entry)):
        raise ArlkitError(
            f"task {name!r}: {entry!r} is not callable; calling it with its config gives the task"
        )
    return entry


def task_section(value: Any) -> TaskConfig:
    """The `task` section as the named task's config model validated it.

    Raises:
        ArlkitError: an unknown task, an unknown field (with a did-you-mean, or whose field it is), a bad value.
    """
    if isinstance(value, TaskConfig):
        return value
    if not isinstance(value, Mapping):
        raise ArlkitError(f"config section 'task' must be a mapping of fields, got {value!r}")
    data = dict(value)
    name = str(data.setdefault("name", DEFAULT_TASK))
    model: type[BaseModel] = resolve_task(name).config_model
    unknown = [k for k in data if k not in model.model_fields]
    if unknown:
        raise ArlkitError("\n  ".join(_unknown_field(k, name, model) for k in unknown))
    try:
        return model.model_validate(data)  # type: ignore[return-value]
    except ValidationError as e:
        raise ArlkitError("\n  ".join(describe_errors(e, ("task",)))) from None


def _unknown_field(key: str, name: str, model: type[BaseModel]) -> str:
    line = f"unknown config field 'task.{key}' (task {name!r})"
    owners = [n for n in TASKS.names() if n != name and key in TASKS.get(n).config_model.model_fields]
    if owners:
        return f"{line}: it is a field of task {' and '.join(map(repr, owners))}"
    close = difflib.get_close_matches(key, list(model.model_fields), n=1)
    return f"{line}; did you mean 'task.{close[0]}'?" if close else line


def build_task(section: TaskConfig) -> Task:
    """The task of a validated `task` section."""
    entry = resolve_task(section.name)
    task = getattr(entry, "from_config", entry)(section)
    if section.dataset is not None:
        from arlkit.tasks.hf_rows import DatasetRowsTask

        return DatasetRowsTask(task, section.dataset)
    return task


def em_label(name: str) -> str:
    """What the named task's `em` metric means (exact match, execution accuracy, ...); "EM" if it does not say."""
    return str(getattr(resolve_task(name), "em_label", "EM"))


def register_local(entry: Any) -> str:
    """Register a task entry for this process under its import path, so a config can name it even when its
    module cannot be imported by name (a class defined in a notebook); returns the name."""
    name = f"{entry.__module__}:{entry.__qualname__}"
    _LOCAL[name] = _checked(entry, name)
    return name
