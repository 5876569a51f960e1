"""The `toywiki` task: multi-hop QA over a seeded synthetic world with one BM25 `search` tool."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

from arlkit.data.toywiki import World, make_world, question_row
from arlkit.envs.qa import make_qa_env
from arlkit.envs.tool_env import ToolEnv
from arlkit.errors import ArlkitError
from arlkit.tasks.base import TASKS, process_reward
from arlkit.tools.search import BM25Search


@TASKS.register("toywiki")
@dataclass(frozen=True)
class ToyWikiTask:
    """Multi-hop QA over a `toywiki` world with one BM25 `search` tool.

    The fields (names and defaults) are the tiny base's cache key: changing them rebuilds the base.
    """

    name: ClassVar[str] = "toywiki"
    em_label: ClassVar[str] = "EM"
    # Demonstrations answer from memory, search the first hop only, or search every hop: on held-out people
    # only the last one works, so the base is imperfect (the PASS@(k,T) mechanism, arXiv 2604.14877).
    demo_strategies: ClassVar[tuple[str, ...]] = ("none", "first_hop", "all_hops")
    extra_tokens: ClassVar[tuple[str, ...]] = ()  # <search> is one of arlkit's own delimiters
    tiny_recipe: ClassVar[dict] = {}  # the recipe's defaults were tuned on toywiki

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
            process_reward=process_reward(self.process_reward, self.process_reward_value),
        )

    def rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        """`n` question rows of `split` ("train", "heldout", "sft" or "rl"), deterministic from `seed`."""
        return [question_row(q) for q in self.world.questions(split, n, seed=seed)]

    def text_corpus(self) -> list[str]:
        return self.world.text_corpus()

    def demo_actions(self, row: dict, strategy: str) -> list[str]:
        """The assistant turns of a scripted demonstration (text), ending with the gold answer.

        Names in queries and answers carry a leading space, as they do in the documents and questions, so a
        name has the same token ids wherever it appears and the tiny model can copy it (with Qwen2's
        pre-tokenisation "Ana" and " Ana" are different tokens).
        """
        if strategy not in self.demo_strategies:
            raise ArlkitError(f"unknown toywiki strategy {strategy!r}; valid: {self.demo_strategies}")
        if strategy == "none":
            return [f"I know this.<answer> {row['answer']}</answer>"]
        hops = list(row["hops"]) if strategy == "all_hops" else list(row["hops"][:1])
        calls = [f"I need {h}.{self._call_text(h)}" for h in hops]
        return [*calls, f"So the answer is<answer> {row['answer']}</answer>"]

    def _call_text(self, query: str) -> str:
        if self.fmt == "tags":
            return f"<search> {query}</search>"
        return f'<tool_call>{{"name": "search", "arguments": {{"query": " {query}"}}}}</tool_call>'
