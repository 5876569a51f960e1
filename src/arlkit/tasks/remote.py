"""A task whose envs run their tools in Ray actors (`ray.enabled`, tools/ray_pool.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from arlkit.config import RayConfig
from arlkit.envs.tool_env import ToolEnv
from arlkit.errors import ArlkitError
from arlkit.tasks.base import Task
from arlkit.tools.base import Tool
from arlkit.tools.ray_pool import ToolPool


@dataclass(frozen=True)
class TaskTools:
    """A picklable tool factory: the tools of one fresh env of `task` (built once per actor)."""

    task: Any

    def __call__(self) -> list[Tool]:
        return list(self.task.make_env().tools.values())


class RayToolsTask:
    """The wrapped task, except that `make_env` swaps the env's tools for proxies into `pool`."""

    def __init__(self, task: Task, pool: ToolPool):
        self.task, self.pool = task, pool

    def make_env(self) -> ToolEnv:
        env = self.task.make_env()
        env.tools = {t.name: t for t in self.pool.tools()}  # same names, schemas and order
        return env

    def __getattr__(self, name: str) -> Any:
        return getattr(self.task, name)


def with_ray_tools(task: Task, cfg: RayConfig) -> Task:
    """`task` itself, or (ray.enabled) its Ray-backed twin with a pool of `cfg.num_tool_actors` actors."""
    if not cfg.enabled:
        return task
    env = task.make_env()
    if not isinstance(getattr(env, "tools", None), dict):  # a message env (a game) calls no tools
        raise ArlkitError(
            f"ray.enabled runs a ToolEnv's tools in Ray actors; the task's env ({type(env).__name__}) has no "
            "tools: set ray.enabled false"
        )
    pool = ToolPool(
        TaskTools(task),
        num_actors=cfg.num_tool_actors,
        timeout_s=cfg.tool_timeout_s,
        max_in_flight=cfg.max_in_flight,
        address=cfg.address,
        num_cpus=cfg.actor_cpus,
    )
    return RayToolsTask(task, pool)  # type: ignore[return-value]
