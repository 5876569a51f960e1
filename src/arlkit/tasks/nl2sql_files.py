"""The `nl2sql_files` task: Spider/BIRD-layout NL2SQL with a row-bound read-only `sql` tool, scored by
execution accuracy (`em`; `f1` is the row-multiset F1)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import ClassVar

from arlkit.config import NL2SQLFilesTaskConfig
from arlkit.data.nl2sql_files import load_nl2sql, load_tables
from arlkit.envs.sql import SQLScorer, make_sql_env
from arlkit.envs.tool_env import ToolEnv
from arlkit.errors import ArlkitError
from arlkit.tasks.base import TASKS, dataclass_from_config, process_reward
from arlkit.tools.sql import SQLTool


@TASKS.register("nl2sql_files")
@dataclass(frozen=True)
class NL2SQLFilesTask:
    """Questions over many databases; each episode's `sql` tool opens the question's own database."""

    name: ClassVar[str] = "nl2sql_files"
    em_label: ClassVar[str] = "execution accuracy"
    config_model: ClassVar[type] = NL2SQLFilesTaskConfig
    from_config = classmethod(dataclass_from_config)

    root: str
    train_file: str | None = "train.json"
    eval_file: str = "dev.json"
    tables_file: str = "tables.json"
    db_dir: str = "database"
    max_turns: int = 4
    fmt: str = "hermes"
    show_schema: bool = True
    time_limit_s: float = 5.0
    max_rows: int = 20
    process_reward: str = "none"
    process_reward_value: float = 0.1

    @cached_property
    def _rows(self) -> dict[str, list[dict]]:
        tables = load_tables(Path(self.root) / self.tables_file)
        files = {"heldout": self.eval_file, "train": self.train_file}
        return {s: load_nl2sql(self.root, f, tables, self.db_dir) for s, f in files.items() if f}

    def rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        """Up to `n` rows of `split` ("train": train_file, "heldout": eval_file), shuffled by `seed`."""
        if split not in self._rows:
            raise ArlkitError(f"nl2sql_files has no {split!r} split: set task.train_file, or use heldout")
        rows = list(self._rows[split])
        random.Random(seed).shuffle(rows)
        return rows[:n]

    def make_env(self) -> ToolEnv:
        return make_sql_env(
            [SQLTool(None, self.time_limit_s, self.max_rows)],  # bound to each row's database at reset
            SQLScorer(self.show_schema, self.time_limit_s),
            fmt=self.fmt,
            max_turns=self.max_turns,
            show_tool_schemas=self.show_schema,
            process_reward=process_reward(self.process_reward, self.process_reward_value),
        )
