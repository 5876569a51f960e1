"""The `toywiki` task: multi-hop QA over a seeded synthetic world with one BM25 `search` tool."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

from arlkit.config import ToyWikiTaskConfig
from arlkit.data.toywiki import World, make_world, question_row
from arlkit.envs.qa import make_qa_env
from arlkit.envs.tool_env import ToolEnv
from arlkit.errors import ArlkitError
from arlkit.tasks.base import TASKS, dataclass_from_config, process_reward
from arlkit.tools.search import BM25Search


@TASKS.register("toywiki")
@dataclass(frozen=True)
class ToyWikiTask:
    """Multi-hop QA over a `toywiki` world with one BM25 `search` tool.

    The fields (names and defaults) are the tiny base's cache key: changing them rebuilds the base.
    """

    name: ClassVar[str] = "toywiki"
    em_label: ClassVar[str] = "EM"
    config_model: ClassVar[type] = ToyWikiTaskConfig
    from_config = classmethod(dataclass_from_config)
    # Demonstrations answer from memory, search the first hop only, or search every hop: on held-out people
    # only the last one works, so the base is imperfect (the PASS@(k,T) mechanism, arXiv 2604.14877).
    demo_strategies: ClassVar[tuple[str, ...]] = ("none", "first_hop", "all_hops")
    extra_tokens: ClassVar[tuple[str, ...]] = ()  # <search> is one of arlkit's own delimiters
    tiny_recipe: ClassVar[dict] = {}  # the recipe's defaults were tuned on toywiki
    demo_twins: ClassVar[int] = 16  # world twins the SFT demonstrations are spread over (demo_sources)

    seed: int = 0
    n_people: int = 1500
    n_cities: int = 40
    n_countries: int = 12
    n_orgs: int = 25
    heldout_frac: float = 0.2
    top_k: int = 1  # one document per search: the tiny base copies from it more reliably than from two
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

    def demo_sources(self, n: int, seed: int) -> list[tuple[ToyWikiTask, dict]]:
        """`n` (task, question row) pairs for the tiny base's SFT demonstrations, spread evenly over
        `demo_twins` twins of the world (`World.redrawn`): each train person's name comes with different
        facts in each twin, so the demonstrations teach reading the search results, not memorising facts.
        A twin's rows and search index are its own; held-out people appear in none of them."""
        twins = [
            _Twin(**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, twin=i)
            for i in range(self.demo_twins)
        ]
        per = -(-n // len(twins))  # ceil
        rows = [[(t, r) for r in t.rows("train", per, seed=seed + 7919 * i)] for i, t in enumerate(twins)]
        return [pair for group in zip(*rows, strict=True) for pair in group][:n]  # interleaved over twins

    def demo_actions(self, row: dict, strategy: str) -> list[str]:
        """The assistant turns of a scripted demonstration (text), ending with the gold answer.

        After each search the next turn first restates the fact it read, copied from the result up to the
        entity it needs ("So Gil Pohl works for Corodyne. I need Corodyne."): a copy of the words that follow
        the same words in the observation, which a tiny model learns long before it learns to pick one name
        out of a document by meaning (without the restatement a 3M-parameter base never learned to copy
        answers from results at all). Names carry a leading space, as in the documents and questions, so a
        name has the same token ids wherever it appears (with Qwen2's pre-tokenisation "Ana" and " Ana"
        are different tokens).
        """
        if strategy not in self.demo_strategies:
            raise ArlkitError(f"unknown toywiki strategy {strategy!r}; valid: {self.demo_strategies}")
        if strategy == "none":
            return [f"I know this.<answer> {row['answer']}</answer>"]
        hops = list(row["hops"]) if strategy == "all_hops" else list(row["hops"][:1])
        # "So" first: a name opening a message would be a different token than the " Name" of the documents
        facts = [f"So {self._fact(h, t)}." for h, t in zip(hops, self._targets(row), strict=False)]
        turns = [f"I need {hops[0]}.{self._call_text(hops[0])}"]
        turns += [f"{fact} I need {h}.{self._call_text(h)}" for fact, h in zip(facts, hops[1:], strict=False)]
        return [*turns, f"{facts[len(hops) - 1]} The answer is<answer> {row['answer']}</answer>"]

    def _targets(self, row: dict) -> list[str]:
        """What each hop's document is read for: the next hop, the answer after the last one, and for a
        comparison each person's birth year."""
        if row["kind"] == "comparison":
            years = {p.name: str(p.birth_year) for p in self.world.people}
            return [years[h] for h in row["hops"]]
        return [*row["hops"][1:], row["answer"]]

    def _fact(self, title: str, target: str) -> str:
        """The sentence of `title`'s document that holds `target`, cut after it."""
        for sentence in self.world.doc_by_title(title).text.split(". "):
            if target in sentence:
                return sentence[: sentence.index(target) + len(target)]
        raise ArlkitError(f"toywiki: {target!r} is not in the document of {title!r}")

    def _call_text(self, query: str) -> str:
        if self.fmt == "tags":
            return f"<search> {query}</search>"
        return f'<tool_call>{{"name": "search", "arguments": {{"query": " {query}"}}}}</tool_call>'


@dataclass(frozen=True)
class _Twin(ToyWikiTask):
    """A ToyWikiTask on a redrawn twin of its world (SFT demonstrations only)."""

    twin: int = 0

    @cached_property
    def world(self) -> World:
        return ToyWikiTask.world.func(self).redrawn(self.twin)
