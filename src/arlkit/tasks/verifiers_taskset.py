"""The `verifiers` task: train on a taskset of the `verifiers` package (0.4, its v1 API: `Taskset`, `Task`,
`TaskData`, `@vf.reward`/`@vf.metric`, `Toolset`), driven through envs/verifiers_env.py.

`task.taskset` names it: `module:Object`, where the object is a `vf.Taskset` subclass (built with
`taskset_args` as its `TasksetConfig`), a Taskset, a function returning one (called with `taskset_args`),
a `vf.Env` (its taskset; its harness and `run()` are not used) or a list of `vf.Task`s; or, without a colon,
the id of an installed verifiers taskset package, loaded by verifiers itself. Each task is a row; a
`heldout_fraction` of them, picked by a hash of `Task.key` (stable across runs and processes), are held out.

What arlkit cannot run is refused at start: a task that needs a container or a verifiers `Runtime` (its
`setup`/`finalize` hooks, or a reward or metric with a required `runtime` parameter), an infinite taskset
without `max_tasks`, a task without a prompt (opened by a simulated user). Needs the `verifiers` extra.
"""

from __future__ import annotations

import hashlib
import inspect
import random
from typing import Any, Literal

from pydantic import Field, ValidationError

from arlkit.config import TaskConfig, describe_errors
from arlkit.envs.verifiers_env import ToolServers, VerifiersEnv, run_async
from arlkit.errors import ArlkitError
from arlkit.tasks.base import TASKS
from arlkit.tasks.resolve import _load

SPLITS = ("train", "heldout")


class VerifiersTaskConfig(TaskConfig):
    name: Literal["verifiers"] = "verifiers"
    taskset: str  # "module:Object" (a Taskset class or instance, function, Env, list of Tasks) or an id
    taskset_args: dict[str, Any] = Field(default_factory=dict)  # its TasksetConfig fields, or the function's
    max_tasks: int | None = Field(None, gt=0)  # the first tasks only; needed for an infinite taskset
    heldout_fraction: float = Field(0.2, gt=0, lt=1)  # of the tasks, by a hash of Task.key
    em_from: str | None = None  # the reward or metric that is held-out `em`; None: whether the reward is > 0
    timeout_s: float = Field(60.0, gt=0)  # per tool call, and for scoring when TaskData.timeout does not say


@TASKS.register("verifiers")
class VerifiersTask:
    config_model = VerifiersTaskConfig
    em_label = "success"

    def __init__(self, config: VerifiersTaskConfig):
        try:
            import verifiers.v1 as vf
        except ImportError:
            raise ArlkitError("task 'verifiers' needs verifiers: pip install 'arlkit[verifiers]'") from None
        self.config = config
        source = _load_taskset(config.taskset, config.taskset_args)
        tasks = _tasks(source, config.max_tasks)
        if len(tasks) < 2:
            raise ArlkitError(
                f"config field 'task.taskset': {config.taskset!r} has {len(tasks)} task(s); a train and a "
                "held-out split need at least 2"
            )
        _check_supported(tasks)
        self.tasks = {t.data.idx: t for t in tasks}
        order = sorted(tasks, key=lambda t: hashlib.sha256(t.key.encode()).hexdigest())
        n_heldout = min(max(round(config.heldout_fraction * len(tasks)), 1), len(tasks) - 1)
        self._splits = {"heldout": order[:n_heldout], "train": order[n_heldout:]}
        shared = type(source).toolsets(source.config) if isinstance(source, vf.Taskset) else []
        self.shared, self.prompt_tools = _tools(tasks[0], shared, config.timeout_s)

    def rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        """At most `n` tasks of `split`, shuffled by `seed`, as rows {id (the task's idx), question, answer}."""
        if split not in self._splits:
            raise ArlkitError(f"task 'verifiers' has no split {split!r}; valid: {', '.join(SPLITS)}")
        tasks = list(self._splits[split])
        random.Random(f"{split}-{seed}").shuffle(tasks)
        return [_row(t) for t in tasks[:n]]

    def make_env(self) -> VerifiersEnv:
        c = self.config
        return VerifiersEnv(self.tasks, self.shared, self.prompt_tools, c.max_turns, c.em_from, c.timeout_s)


def _load_taskset(spec: str, args: dict[str, Any]) -> Any:
    """The taskset (or list of tasks) `task.taskset` names.

    Raises:
        ArlkitError: the object does not import, is no taskset, or `taskset_args` do not fit it.
    """
    import verifiers.v1 as vf
    from verifiers.v1.utils.generic import concrete_type

    where = "config field 'task.taskset'"
    try:
        if ":" not in spec:  # an installed taskset package, verifiers' own form
            obj = vf.load_taskset(_validated(vf.taskset_config_type(spec), {**args, "id": spec}))
        else:
            obj = _load(spec, where)
            if isinstance(obj, type) and issubclass(obj, vf.Taskset):
                obj = obj(_validated(concrete_type(obj, vf.TasksetConfig, origin=vf.Taskset), args))
            elif callable(obj) and not isinstance(obj, (vf.Taskset, vf.Env)):
                obj = obj(**args)
            elif args:
                raise ArlkitError(
                    f"config field 'task.taskset_args': {spec!r} is built already; it takes none"
                )
    except ArlkitError:
        raise
    except Exception as e:  # verifiers' loaders and the user's function raise many types
        raise ArlkitError(f"{where}: cannot load {spec!r}: {type(e).__name__}: {e}") from None
    if isinstance(obj, vf.Env):
        obj = obj.taskset
    if isinstance(obj, vf.Taskset) or (
        isinstance(obj, list | tuple) and all(isinstance(t, vf.Task) for t in obj)
    ):
        return obj
    raise ArlkitError(
        f"{where}: {spec!r} gave {type(obj).__name__}, not a verifiers Taskset or list of Tasks"
    )


def _validated(config_cls: type | None, args: dict[str, Any]) -> Any:
    import verifiers.v1 as vf

    try:
        return (config_cls or vf.TasksetConfig).model_validate(args)
    except ValidationError as e:
        raise ArlkitError("\n  ".join(describe_errors(e, ("task", "taskset_args")))) from None


def _tasks(source: Any, max_tasks: int | None) -> list[Any]:
    """The tasks, each with its `idx` (a Taskset sets it on iteration; a list's position otherwise)."""
    import verifiers.v1 as vf

    if isinstance(source, vf.Taskset):
        if not source.bounded and max_tasks is None:
            raise ArlkitError(f"config field 'task.max_tasks': {type(source).__name__} is infinite; set it")
        try:
            return list(source.take(max_tasks) if max_tasks else source)
        except Exception as e:  # the taskset's own load()
            raise ArlkitError(
                f"config field 'task.taskset': loading its tasks failed: {type(e).__name__}: {e}"
            ) from None
    return [t.with_data(idx=i) for i, t in enumerate(source[:max_tasks])]


def _check_supported(tasks: list[Any]) -> None:
    """Refuse, at start, tasks whose scoring or preparation needs what arlkit does not run."""
    import verifiers.v1 as vf

    def needs_runtime(fn: Any) -> bool:  # verifiers' own test (Task.score): a runtime without a default
        param = inspect.signature(fn).parameters.get("runtime")
        return param is not None and param.default is inspect.Parameter.empty

    task = tasks[0]  # a taskset yields one task type
    cls, name = type(task), type(task).__name__
    hooks = [f"{h}()" for h in ("setup", "finalize") if getattr(cls, h) is not getattr(vf.Task, h)]
    hooks += [fn.__name__ for kind in ("reward", "metric") for fn in task.hooks(kind) if needs_runtime(fn)]
    if cls.NEEDS_CONTAINER or hooks:
        what = (
            "it needs a container" if cls.NEEDS_CONTAINER else f"{', '.join(hooks)} need a verifiers Runtime"
        )
        raise ArlkitError(f"config field 'task.taskset': task {name} cannot run in arlkit: {what}")
    if any(t.data.prompt is None for t in tasks):
        raise ArlkitError(
            f"config field 'task.taskset': a task {name} has no prompt (a simulated user opens it)"
        )


def _tools(
    task: Any, shared_toolsets: list[Any], timeout_s: float
) -> tuple[ToolServers | None, list[dict] | None]:
    """The taskset's tools, started once, and every tool schema (the taskset's and the task's own)."""
    shared = ToolServers(shared_toolsets) if shared_toolsets else None
    if shared is not None:
        run_async(shared.start(), timeout_s)
    own = type(task).toolsets(task.config)
    schemas = (shared.schemas if shared else []) + (ToolServers(own).schemas if own else [])
    return shared, schemas or None


def _row(task: Any) -> dict:
    data = task.data.model_dump(mode="json")
    return {"id": task.data.idx, "question": task.data.prompt_text, "answer": data.get("answer")}
