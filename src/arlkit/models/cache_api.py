"""The keyword transformers takes a KV cache under, and the attribute it returns it in.

transformers 5.25 renamed `past_key_values` to `cache` (argument and output) and warns on the old name on
every forward; it says the old name goes in 5.40. Older releases (the package allows >= 4.51) know only
`past_key_values`. Every forward that passes a cache goes through `with_cache`, so rollouts run on both sides
of the rename without warnings (tests/test_cache_api.py checks which name this install takes).
"""

from __future__ import annotations

import inspect
from typing import Any

from transformers.models.qwen2.modeling_qwen2 import Qwen2ForCausalLM

# One name per transformers install: every decoder model is generated from the same template.
CACHE_KWARG = (
    "cache" if "cache" in inspect.signature(Qwen2ForCausalLM.forward).parameters else "past_key_values"
)


def with_cache(cache: Any) -> dict[str, Any]:
    """Keyword arguments that hand `cache` to a transformers forward."""
    return {CACHE_KWARG: cache}


def returned_cache(out: Any) -> Any:
    """The cache a forward returned."""
    return getattr(out, CACHE_KWARG)
