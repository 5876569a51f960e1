"""Task wiring: a world or data set, its tools and its env, as one object the trainer asks for rows and envs.

Text only (no torch), like `envs/` and `tools/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from arlkit.data.toywiki import World, make_world, question_row
from arlkit.envs.qa import gold_retrieval_reward, make_qa_env, tool_success_reward
from arlkit.envs.tool_env import ToolEnv
from arlkit.tools.search import BM25Search

REWARD_ONLY_FIELDS = ("process_reward", "process_reward_value")  # not part of the tiny base's identity
PROCESS_REWARDS = {
    "none": lambda value: None,
    "tool_success": tool_success_reward,
    "gold_retrieval": gold_retrieval_reward,
}


@dataclass(frozen=True)
class ToyWikiTask:
    """Multi-hop QA over a `toywiki` world with one BM25 `search` tool."""

    seed: int = 0
    n_people: int = 1500
    n_cities: int = 40
    n_countries: int = 12
    n_orgs: int = 25
    heldout_frac: float = 0.2
    top_k: int = 2
    max_turns: int = 4
    fmt: str = "tags"  # fewer tokens per call than hermes JSON: the tiny base learns to copy names sooner
    show_tool_schemas: bool = False
    process_reward: str = "none"  # "none", "tool_success" or "gold_retrieval" (Agent-R1 process rewards)
    process_reward_value: float = 0.1

    @cached_property
    def world(self) -> World:
        return make_world(
            seed=self.seed,
            n_people=self.n_people,
            n_cities=self.n_cities,
            n_countries=self.n_countries,
            n_orgs=self.n_orgs,
            heldout_frac=self.heldout_frac,
        )

    @cached_property
    def search(self) -> BM25Search:
        docs = [(d.title, d.text) for d in self.world.docs]
        return BM25Search(docs, top_k=self.top_k, description="Search the wiki.")

    def make_env(self) -> ToolEnv:
        # The tiny model learns the tool from demonstrations, not from reading a schema, and on CPU every
        # prompt token is paid for in every forward: the default prompt is the bare question (Search-R1 style).
        # `show_tool_schemas=True` renders the schemas with the chat template, as a real model needs.
        return make_qa_env(
            [self.search],
            fmt=self.fmt,
            max_turns=self.max_turns,
            system_prompt=None,
            show_tool_schemas=self.show_tool_schemas,
            process_reward=PROCESS_REWARDS[self.process_reward](self.process_reward_value),
        )

    def rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        """`n` question rows of `split` ("train" or "heldout"), deterministic from `seed`."""
        return [question_row(q) for q in self.world.questions(split, n, seed=seed)]
