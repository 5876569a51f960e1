"""BM25 search over an in-memory corpus (``bm25s``), as a tool for search agents."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from arlkit.errors import ArlkitError
from arlkit.tools.base import ToolResult

__all__ = ["BM25Search", "tokenize"]

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
        self._bm25.index(corpus, show_progress=False)

    def __len__(self) -> int:
        return len(self.texts)

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
