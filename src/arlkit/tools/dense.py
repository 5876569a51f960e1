"""Dense retrieval: inner product of normalised embeddings (cosine), with faiss when it is installed
(`pip install 'arlkit[dense]'`) and exact numpy search otherwise; the same top-k either way.

The encoder is any `encode(texts) -> (N, D) array` function, so this module stays torch-free; a
sentence-transformers encoder comes from `arlkit.models.embedder`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from arlkit.cache import build_once
from arlkit.errors import ArlkitError
from arlkit.tools.base import ToolResult
from arlkit.tools.search import corpus_key

__all__ = ["DenseSearch"]

Encoder = Callable[[list[str]], Any]


def _normalise(x: Any) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ArlkitError(f"the encoder must return a (N, D) array, got shape {x.shape}")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class DenseSearch:
    """A `search` tool returning the top-k documents by cosine similarity of embeddings."""

    def __init__(
        self,
        docs: Sequence[tuple[str, str]],
        encode: Encoder,
        top_k: int = 3,
        name: str = "search",
        description: str = "Search the knowledge base and return the most relevant passages for a query.",
        embeddings: np.ndarray | None = None,
    ) -> None:
        if not docs:
            raise ArlkitError("DenseSearch needs at least one document")
        self.titles = [t for t, _ in docs]
        self.texts = [x for _, x in docs]
        self.encode, self.top_k, self.name, self.description = encode, top_k, name, description
        self.parameters: dict = {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "What to search for."}},
            "required": ["query"],
        }
        # (N, D) unit vectors; documents are encoded with their title, as they are indexed for BM25
        self.embeddings = _normalise(
            embeddings if embeddings is not None else encode([f"{t} {x}" for t, x in docs])
        )
        self._index = _faiss_index(self.embeddings)

    @classmethod
    def cached(
        cls,
        docs: Sequence[tuple[str, str]],
        encode: Encoder,
        index_dir: str | Path,
        top_k: int,
        model_id: str,
    ) -> DenseSearch:
        """Embeddings of `docs` under `model_id`, loaded from `index_dir` or computed and saved there first."""
        key = hashlib.sha256(f"{model_id}|{corpus_key(docs)}".encode()).hexdigest()[:16]
        path = Path(index_dir) / f"dense-{key}.npy"
        if not path.is_file():
            emb = _normalise(encode([f"{t} {x}" for t, x in docs]))

            def save(tmp: Path) -> None:
                with tmp.open("wb") as f:
                    np.save(f, emb)

            build_once(path, save)
        return cls(docs, encode, top_k, embeddings=np.load(path))

    def retrieve(self, query: str, k: int | None = None) -> list[int]:
        """Indices of the `k` most similar documents, best first (ties: lower index first)."""
        k = min(self.top_k if k is None else k, len(self.texts))
        q = _normalise(self.encode([query]))  # (1, D)
        if self._index is not None:
            _, ids = self._index.search(q, k)
            return [int(i) for i in ids[0] if i >= 0]
        scores = self.embeddings @ q[0]  # (N,)
        return [int(i) for i in np.lexsort((np.arange(len(scores)), -scores))[:k]]

    def __call__(self, query: str) -> ToolResult:
        if not query.strip():
            return ToolResult("Error: the search query was empty; write what to search for.", ok=False)
        hits = self.retrieve(query)
        lines = [f"({r}) {self.titles[i]}: {' '.join(self.texts[i].split())}" for r, i in enumerate(hits, 1)]
        return ToolResult("\n".join(lines) or "No results.")


def _faiss_index(embeddings: np.ndarray) -> Any:
    try:
        import faiss
    except ImportError:
        return None
    index = faiss.IndexFlatIP(embeddings.shape[1])
    index.add(embeddings)
    return index
