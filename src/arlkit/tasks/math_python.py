"""The `math_python` task: arithmetic word problems with a sandboxed `python` tool; `em` = `f1` = answer
accuracy (envs/math.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

from arlkit.config import MathPythonTaskConfig
from arlkit.data.mathword import problems
from arlkit.envs.math import make_math_env
from arlkit.envs.tool_env import ToolEnv
from arlkit.errors import ArlkitError
from arlkit.tasks.base import TASKS, dataclass_from_config, process_reward
from arlkit.tools.python import PythonTool


@TASKS.register("math_python")
@dataclass(frozen=True)
class MathPythonTask:
    """Two-step arithmetic word problems; the python tool computes exactly, the model's head does not."""

    name: ClassVar[str] = "math_python"
    em_label: ClassVar[str] = "answer accuracy"
    config_model: ClassVar[type] = MathPythonTaskConfig
    from_config = classmethod(dataclass_from_config)
    # Demonstrations answer mentally, compute the first step in python and the rest mentally, or compute
    # everything in python: only the last is reliably right on new numbers.
    demo_strategies: ClassVar[tuple[str, ...]] = ("mental", "first_step", "python")
    extra_tokens: ClassVar[tuple[str, ...]] = ("<python>", "</python>")
    tiny_recipe: ClassVar[dict] = {
        "hidden_size": 128,
        "intermediate_size": 352,
        "n_demos": 4000,
        "sft": {"steps": 400, "batch_size": 32, "lr": 3e-3},
    }

    seed: int = 0
    max_turns: int = 3
    fmt: str = "tags"
    show_tool_schemas: bool = False
    time_limit_s: float = 5.0
    memory_mb: int = 512
    process_reward: str = "none"
    process_reward_value: float = 0.1

    @cached_property
    def python(self) -> PythonTool:
        return PythonTool(time_limit_s=self.time_limit_s, memory_mb=self.memory_mb)

    def make_env(self) -> ToolEnv:
        return make_math_env(
            [self.python],
            fmt=self.fmt,
            max_turns=self.max_turns,
            system_prompt=None,
            show_tool_schemas=self.show_tool_schemas,
            process_reward=process_reward(self.process_reward, self.process_reward_value),
            tool_timeout_s=self.time_limit_s + 5.0,  # the tool stops its own child first
        )

    def rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        """`n` problems of `split` ("train", "heldout", "sft" or "rl"), deterministic from `seed`."""
        return problems(self.seed * 100_003 + seed, split, n)

    def text_corpus(self) -> list[str]:
        rows = problems(self.seed, "train", 3000)
        return [t for r in rows for t in (r["question"], f"print({r['expression']})", r["answer"])]

    def demo_actions(self, row: dict, strategy: str) -> list[str]:
        if strategy not in self.demo_strategies:
            raise ArlkitError(f"unknown math_python strategy {strategy!r}; valid: {self.demo_strategies}")
        answer = f"<answer> {row['answer']}</answer>"
        if strategy == "mental":
            return [f"I can do this.{answer}"]
        code = row["first_step"] if strategy == "first_step" else row["expression"]
        call = self._call_text(f"print({code})")
        return [f"Compute.{call}", f"So the answer is{answer}"]

    def _call_text(self, code: str) -> str:
        if self.fmt == "tags":
            return f"<python> {code}</python>"
        return f'<tool_call>{{"name": "python", "arguments": {json.dumps({"code": code})}}}</tool_call>'
