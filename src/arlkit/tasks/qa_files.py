"""The `qa_files` task: multi-hop QA from the files a user has (HotpotQA, 2WikiMultihopQA, MuSiQue,
JSONL/Parquet), with a `search` tool over each question's own paragraphs or over a global corpus."""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import ClassVar

from arlkit.cache import cache_root
from arlkit.config import QAFilesTaskConfig
from arlkit.data.qa_files import load_corpus, load_qa_file
from arlkit.envs.qa import make_qa_env
from arlkit.envs.tool_env import ToolEnv
from arlkit.errors import ArlkitError
from arlkit.tasks.base import TASKS, dataclass_from_config, process_reward
from arlkit.tools.base import Tool
from arlkit.tools.search import BM25Search, RowSearch


@TASKS.register("qa_files")
@dataclass(frozen=True)
class QAFilesTask:
    """Questions and gold answers from files; EM/F1 (SQuAD normalisation) against `answer` and aliases.

    Retrieval "distractor" searches the question's own paragraphs (the distractor setting of HotpotQA and
    2Wiki, MuSiQue's 20 paragraphs); "corpus" searches one index built from every paragraph of both files, or
    from `corpus_file`, saved under `index_dir` (default: the arlkit cache) and reused by later runs.
    """

    name: ClassVar[str] = "qa_files"
    em_label: ClassVar[str] = "EM"
    config_model: ClassVar[type] = QAFilesTaskConfig
    from_config = classmethod(dataclass_from_config)

    eval_file: str
    train_file: str | None = None
    format: str = "auto"
    retrieval: str = "distractor"
    corpus_file: str | None = None
    retriever: str = "bm25"
    dense_model: str | None = None
    index_dir: str | None = None
    top_k: int = 3
    max_turns: int = 4
    fmt: str = "hermes"
    show_tool_schemas: bool = True
    process_reward: str = "none"
    process_reward_value: float = 0.1

    def _file(self, split: str) -> str:
        if split == "heldout":
            return self.eval_file
        if split == "train" and self.train_file:
            return self.train_file
        raise ArlkitError(f"qa_files has no {split!r} split: set task.train_file, or use heldout")

    @cached_property
    def _rows(self) -> dict[str, list[dict]]:
        files = {"heldout": self.eval_file, "train": self.train_file}
        return {split: load_qa_file(path, self.format) for split, path in files.items() if path}

    def rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        """Up to `n` rows of `split` ("train": train_file, "heldout": eval_file), shuffled by `seed`."""
        self._file(split)
        rows = list(self._rows[split])
        random.Random(seed).shuffle(rows)
        return rows[:n]

    @cached_property
    def corpus(self) -> list[tuple[str, str]]:
        """The global corpus: `corpus_file`, else every distinct paragraph of the loaded files."""
        if self.corpus_file:
            return load_corpus(self.corpus_file)
        seen = {(t, x): None for rows in self._rows.values() for r in rows for t, x in r["paragraphs"]}
        if not seen:
            raise ArlkitError("retrieval 'corpus' found no paragraphs in the files: set task.corpus_file")
        return list(seen)

    @cached_property
    def corpus_search(self) -> Tool:
        index_dir = Path(self.index_dir) if self.index_dir else cache_root() / "indexes"
        if self.retriever == "dense":
            from arlkit.models.embedder import sentence_transformer_encoder
            from arlkit.tools.dense import DenseSearch

            encode = sentence_transformer_encoder(str(self.dense_model))
            return DenseSearch.cached(
                self.corpus, encode, index_dir, self.top_k, model_id=str(self.dense_model)
            )
        return BM25Search.cached(self.corpus, index_dir, top_k=self.top_k)

    def make_env(self) -> ToolEnv:
        search = RowSearch(self.top_k) if self.retrieval == "distractor" else self.corpus_search
        return make_qa_env(
            [search],
            fmt=self.fmt,
            max_turns=self.max_turns,
            show_tool_schemas=self.show_tool_schemas,
            process_reward=process_reward(self.process_reward, self.process_reward_value),
        )
