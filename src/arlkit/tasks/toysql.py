"""The `toysql` task: NL2SQL on a seeded SQLite shop with one read-only `sql` tool, scored by execution
accuracy (`em`; `f1` is the row-multiset F1)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import ClassVar

from arlkit.cache import build_once, cache_root
from arlkit.config import ToySQLTaskConfig
from arlkit.data.toysql import LOOKUP, SCHEMA, TEMPLATES, Shop, make_shop
from arlkit.envs.sql import SQLScorer, make_sql_env
from arlkit.envs.tool_env import ToolEnv
from arlkit.errors import ArlkitError
from arlkit.tasks.base import TASKS, dataclass_from_config, process_reward
from arlkit.tools.sql import SQLTool


@TASKS.register("toysql")
@dataclass(frozen=True)
class ToySQLTask:
    """Questions about one customer of a seeded shop; the final answer is a SQL query."""

    name: ClassVar[str] = "toysql"
    em_label: ClassVar[str] = "execution accuracy"
    config_model: ClassVar[type] = ToySQLTaskConfig
    from_config = classmethod(dataclass_from_config)
    # Demonstrations write the customer's id from memory, look it up with the tool first, or join on the
    # name. Memory fails on customers the base never saw, so the greedy base is imperfect and RL has room.
    demo_strategies: ClassVar[tuple[str, ...]] = ("guess", "lookup", "join")
    extra_tokens: ClassVar[tuple[str, ...]] = ("<sql>", "</sql>")
    # Templated SQL needs less capacity than toywiki's prose: a 128-wide model builds in minutes on a laptop
    # CPU. 1500 steps at lr 1e-3: with 300 steps at 3e-3 (and 600 at 1e-3) the base copied the surname into the
    # joined query but not the first name ('Rita Ulm' -> 'Vito Ulm'; greedy held-out accuracy 0.10 and 0.12),
    # so no strategy worked on held-out customers and RL had nothing to reinforce (1500 steps: join 0.92).
    tiny_recipe: ClassVar[dict] = {
        "hidden_size": 128,
        "intermediate_size": 352,
        "n_demos": 3000,
        "sft": {"steps": 1500, "batch_size": 32, "lr": 1e-3},
    }

    seed: int = 0
    n_customers: int = 600
    heldout_frac: float = 0.2
    max_turns: int = 3
    fmt: str = "tags"
    show_schema: bool = False  # the tiny base knows its one schema; a real model needs it in the prompt
    time_limit_s: float = 2.0
    max_rows: int = 20
    process_reward: str = "none"
    process_reward_value: float = 0.1

    @cached_property
    def shop(self) -> Shop:
        return make_shop(self.seed, self.n_customers, self.heldout_frac)

    @cached_property
    def db_path(self) -> Path:
        """The shop as a SQLite file, built once per shop and cached (read-only from then on)."""
        # keyed by the content itself, so a change to the generator can never reuse a stale file
        key = hashlib.sha256(f"{SCHEMA}|{self.shop!r}".encode()).hexdigest()[:12]
        return build_once(cache_root() / "toysql" / f"shop-{key}.sqlite", self.shop.write)

    def make_env(self) -> ToolEnv:
        tool = SQLTool(self.db_path, self.time_limit_s, self.max_rows)
        return make_sql_env(
            [tool],
            SQLScorer(self.show_schema, self.time_limit_s),
            fmt=self.fmt,
            max_turns=self.max_turns,
            system_prompt=None,  # as toywiki: the tiny base learns the tool from demonstrations
            show_tool_schemas=self.show_schema,
            process_reward=process_reward(self.process_reward, self.process_reward_value),
        )

    def rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        """`n` rows of `split` ("train", "heldout", "sft" or "rl"), each with its `db_path` and `schema`."""
        extra = {"db_path": str(self.db_path), "schema": SCHEMA}
        return [{**r, **extra} for r in self.shop.questions(split, n, seed)]

    def text_corpus(self) -> list[str]:
        return self.shop.text_corpus()

    def demo_actions(self, row: dict, strategy: str) -> list[str]:
        """Assistant turns of a demonstration; queries and answers start with a space, like toywiki's names."""
        if strategy not in self.demo_strategies:
            raise ArlkitError(f"unknown toysql strategy {strategy!r}; valid: {self.demo_strategies}")
        by_id = TEMPLATES[row["kind"]][1].format(k=row["customer_id"])
        if strategy == "guess":
            return [f"I know the id.<answer> {by_id}</answer>"]
        if strategy == "join":
            return [f"Join on the name.<answer> {row['query']}</answer>"]
        lookup = LOOKUP.format(c=row["customer"])
        call = f"<sql> {lookup}</sql>" if self.fmt == "tags" else _hermes_call(lookup)
        return [f"Find the id.{call}", f"So the query is<answer> {by_id}</answer>"]


def _hermes_call(query: str) -> str:
    import json

    return f'<tool_call>{{"name": "sql", "arguments": {json.dumps({"query": " " + query})}}}</tool_call>'
