"""The Task protocol, the task registry and the process rewards every task can use.

A task is a world or data set, its tools and its env, as one object the trainer asks for rows and envs. A
*toy* task can also teach the embedded tiny base: it supplies the text the tiny tokenizer is trained on and
scripted demonstrations that mix strategies (DESIGN.md, "The embedded default"). Text only (no torch), like
`envs/` and `tools/`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

from arlkit.envs.qa import gold_retrieval_reward, tool_success_reward
from arlkit.envs.tool_env import ProcessReward, ToolEnv
from arlkit.errors import ArlkitError
from arlkit.registry import Registry

REWARD_ONLY_FIELDS = ("process_reward", "process_reward_value")  # not part of the tiny base's identity
# Config fields that steer the run (which questions, how many to evaluate), not the task object.
RUN_FIELDS = ("name", "train_split", "n_eval", "eval_seed", "dataset")
PROCESS_REWARDS: dict[str, Callable[[float], ProcessReward | None]] = {
    "none": lambda value: None,
    "tool_success": tool_success_reward,
    "gold_retrieval": gold_retrieval_reward,
}
TASKS: Registry[Callable[..., Any]] = Registry("task")


@runtime_checkable
class Task(Protocol):
    """What the trainer needs from a task.

    `rows(split, n, seed)` gives `n` plain-dict rows (at most `n` for a file) of split "train", "heldout" or a
    task-specific one ("sft", "rl"); `make_env()` a fresh env per episode (tools bound to a row live in it).
    The env's metrics always hold `em`; a task may say what `em` means in an `em_label` attribute (exact
    match, execution accuracy, answer accuracy). A task is built by its entry (tasks/resolve.py).
    """

    def make_env(self) -> ToolEnv: ...

    def rows(self, split: str, n: int, seed: int = 0) -> list[dict]: ...


@runtime_checkable
class ToyTask(Task, Protocol):
    """A task the embedded tiny base can be built for (`model.path: tiny`).

    `demo_actions(row, strategy)` is the assistant turns (text) of a scripted demonstration that follows one
    of `demo_strategies`; the recipe mixes them so the base is imperfect and RL has room. `extra_tokens` are
    the task's tool delimiters (e.g. `<sql>`), made single tokens of the tiny tokenizer like arlkit's own;
    `tiny_recipe` overrides fields of the tiny recipe (models/tiny.py TinyRecipe; "sft" as a dict); `name`
    keys the built base.
    """

    name: ClassVar[str]
    demo_strategies: ClassVar[tuple[str, ...]]
    extra_tokens: ClassVar[tuple[str, ...]]
    tiny_recipe: ClassVar[dict[str, Any]]

    def text_corpus(self) -> list[str]: ...

    def demo_actions(self, row: dict, strategy: str) -> list[str]: ...


def process_reward(name: str, value: float) -> ProcessReward | None:
    """The Agent-R1 process reward called `name` (see PROCESS_REWARDS) paying `value`."""
    if name not in PROCESS_REWARDS:
        raise ArlkitError(f"unknown process_reward {name!r}; valid: {', '.join(PROCESS_REWARDS)}")
    return PROCESS_REWARDS[name](value)


def dataclass_from_config(cls: type, section: Any) -> Any:
    """A built-in task (a frozen dataclass) from its validated config section: every field of the section
    that is not a run field is a field of the class of the same name, so the two cannot drift apart silently."""
    fields: Mapping[str, Any] = {k: v for k, v in dict(section).items() if k not in RUN_FIELDS}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:  # a developer error: the config section and the task class disagree
        raise TypeError(f"task {section.name!r}: config fields {unknown} are not fields of {cls.__name__}")
    return cls(**fields)
