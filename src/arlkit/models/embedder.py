"""A sentence-transformers encoder for dense retrieval (tools/dense.py), from a local model path."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from arlkit.errors import ArlkitError


def sentence_transformer_encoder(path: str, batch_size: int = 64) -> Callable[[list[str]], np.ndarray]:
    """`encode(texts) -> (N, D)` float32 embeddings of the sentence-transformers model at `path`.

    Raises:
        ArlkitError: sentence-transformers is not installed, or `path` holds no loadable model.
    """
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ArlkitError(
            "dense retrieval needs sentence-transformers: pip install 'arlkit[dense]'"
        ) from None
    try:
        model = SentenceTransformer(path)
    except Exception as e:  # many types; the user needs the path and the cause
        raise ArlkitError(f"could not load a sentence-transformers model from {path!r}: {e}") from None
    return lambda texts: np.asarray(model.encode(list(texts), batch_size=batch_size), dtype=np.float32)
