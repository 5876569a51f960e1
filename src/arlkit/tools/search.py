"""BM25 search over an in-memory corpus (``bm25s``), as a tool for search agents."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from arlkit.cache import build_once
from arlkit.errors import ArlkitError
from arlkit.tools.base import ToolResult

__all__ = ["BM25Search", "RowSearch", "corpus_key", "tokenize"]

_WORD = re.compile(r"\w+")
_DEFAULT_DESCRIPTION = "Search the knowledge base and return the most relevant passages for a query."


def tokenize(text: str) -> list[str]:
    """Lowercased word tokens; no stemming or stopword removal so short queries (names) still match."""
    return _WORD.findall(text.lower())


def _split_doc(doc: Any, index: int) -> tuple[str | None, str]:
    if isinstance(doc, str):
        return None, doc
    if isinstance(doc, (tuple, list)) and len(doc) == 2 and all(isinstance(x, str) for x in doc):
        return doc[0], doc[1]
    raise ArlkitError(f"BM25Search: document {index} must be a str or a (title, text) pair, got {doc!r:.80}")


class BM25Search:
    """A :class:`~arlkit.tools.base.Tool` returning the top-k BM25 documents for a query."""

    def __init__(
        self,
        docs: Sequence[str] | Sequence[tuple[str, str]],
        top_k: int = 3,
        name: str = "search",
        description: str = _DEFAULT_DESCRIPTION,
        _index_dir: Path | None = None,
    ) -> None:
        import bm25s  # imported here so `import arlkit.tools` stays light

        if len(docs) == 0:
            raise ArlkitError("BM25Search needs at least one document")
        if top_k < 1:
            raise ArlkitError(f"BM25Search: top_k must be >= 1, got {top_k}")
        pairs = [_split_doc(d, i) for i, d in enumerate(docs)]
        self.titles: list[str | None] = [t for t, _ in pairs]
        self.texts: list[str] = [x for _, x in pairs]
        self.top_k = top_k
        self.name = name
        self.description = description
        self.parameters: dict = {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "What to search for."}},
            "required": ["query"],
        }
        # Titles are indexed with the text: entity names often appear only in the title.
        corpus = [tokenize(f"{t} {x}" if t else x) for t, x in pairs]
        self._bm25 = bm25s.BM25()
        if _index_dir is not None:  # `load`: the index was built and saved before
            self._bm25 = bm25s.BM25.load(str(_index_dir), show_progress=False)
        else:
            self._bm25.index(corpus, show_progress=False)

    def __len__(self) -> int:
        return len(self.texts)

    def save(self, path: str | Path) -> None:
        """Write the index and the documents to folder `path`, for :meth:`cached`/:meth:`load`."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self._bm25.save(str(path), show_progress=False)
        with (path / "docs.jsonl").open("w") as f:
            for t, x in zip(self.titles, self.texts, strict=True):
                f.write(json.dumps([t, x]) + "\n")

    @classmethod
    def load(cls, path: str | Path, top_k: int = 3, **kw: Any) -> BM25Search:
        """The search tool saved in folder `path` by :meth:`save`, without re-indexing."""
        path = Path(path)
        docs_file = path / "docs.jsonl"
        if not docs_file.is_file():
            raise ArlkitError(f"{str(path)!r} holds no saved BM25 index (no docs.jsonl)")
        docs = [tuple(json.loads(line)) for line in docs_file.read_text().splitlines()]
        return cls(docs, top_k=top_k, _index_dir=path, **kw)

    @classmethod
    def cached(
        cls, docs: Sequence[tuple[str, str]], index_dir: str | Path, top_k: int = 3, **kw: Any
    ) -> BM25Search:
        """Load the index of `docs` from `index_dir/<corpus key>`, or build it and save it there first."""
        folder = Path(index_dir) / f"bm25-{corpus_key(docs)}"
        if (folder / "docs.jsonl").is_file():
            return cls.load(folder, top_k=top_k, **kw)
        search = cls(docs, top_k=top_k, **kw)
        build_once(folder, search.save)
        return search

    def retrieve(self, query: str, k: int | None = None) -> list[int]:
        """Indices of the best documents (score > 0), best first; ties go to the lower index."""
        k = self.top_k if k is None else k
        ids = self._bm25.get_tokens_ids(tokenize(query))  # unknown words are left out
        if k <= 0 or not ids:
            return []
        scores = np.asarray(self._bm25.get_scores_from_ids(ids), dtype=np.float64)
        hits = np.flatnonzero(scores > 0)
        # lexsort sorts by the last key first: score descending, then document index ascending.
        order = hits[np.lexsort((hits, -scores[hits]))]
        return [int(i) for i in order[:k]]

    def format_doc(self, index: int) -> str:
        """One document on one line: ``Title: text`` (or the text alone)."""
        text = " ".join(self.texts[index].split())
        title = self.titles[index]
        return f"{title}: {text}" if title else text

    def __call__(self, query: str) -> ToolResult:
        if not isinstance(query, str) or not query.strip():
            return ToolResult("Error: the search query was empty; write what to search for.", ok=False)
        hits = self.retrieve(query)
        if not hits:
            return ToolResult("No results.")
        return ToolResult("\n".join(f"({r}) {self.format_doc(i)}" for r, i in enumerate(hits, start=1)))

    def __repr__(self) -> str:
        return f"BM25Search(name={self.name!r}, docs={len(self)}, top_k={self.top_k})"


def corpus_key(docs: Sequence[tuple[str | None, str]]) -> str:
    """A short hash of a corpus's titles and texts, naming its saved index."""
    h = hashlib.sha256()
    for title, text in docs:
        h.update(json.dumps([title, text]).encode())
    return h.hexdigest()[:16]


class RowSearch:
    """BM25 over the episode's own paragraphs (`row["paragraphs"]`: HotpotQA's distractor setting).

    A row-bound tool: ToolEnv calls :meth:`bind_row` at reset, so each env needs its own instance.
    """

    def __init__(self, top_k: int = 3, name: str = "search", description: str = _DEFAULT_DESCRIPTION) -> None:
        self.top_k, self.name, self.description = top_k, name, description
        self.parameters: dict = {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "What to search for."}},
            "required": ["query"],
        }
        self._search: BM25Search | None = None

    def bind_row(self, row: dict) -> None:
        paragraphs = row.get("paragraphs") or []
        if not paragraphs:
            raise ArlkitError(
                f"row {row.get('id')!r} has no paragraphs to search; use the corpus retrieval setting instead"
            )
        self._search = BM25Search([tuple(p) for p in paragraphs], top_k=self.top_k, name=self.name)

    def __call__(self, query: str) -> ToolResult:
        if self._search is None:
            raise ArlkitError("RowSearch was called before bind_row (it must belong to a ToolEnv)")
        return self._search(query)
