"""Rollouts pass their KV cache under the name this transformers install takes, so no deprecation warning is
raised on every forward and a release that drops the old name does not break generation."""

from __future__ import annotations

import inspect
import warnings

from transformers import LlamaForCausalLM, Qwen2ForCausalLM

from arlkit.models.cache_api import CACHE_KWARG
from arlkit.rollout.continuous import ContinuousEngine
from arlkit.rollout.engine import RolloutParams, TurnSyncRunner, rollout
from arlkit.rollout.generator import HFGenerator


def test_cache_keyword_is_what_the_models_take() -> None:
    for cls in (Qwen2ForCausalLM, LlamaForCausalLM):  # the tiny base's and SmolLM2's architectures
        assert CACHE_KWARG in inspect.signature(cls.forward).parameters


def test_rollouts_raise_no_cache_deprecation(tiny, task) -> None:
    rows = task.rows("train", 3)
    params = RolloutParams(max_turns=2, max_new_tokens=12, max_length=512)
    for runner in (
        ContinuousEngine(tiny.model, tiny.tokenizer.pad_token_id),
        TurnSyncRunner(HFGenerator(tiny.model, tiny.tokenizer.pad_token_id)),
    ):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trajs = rollout(runner, tiny.tokenizer, task.make_env, rows, [0, 1, 2], params)
        assert all(t.n_generated > 0 for t in trajs)
        cache_warnings = [
            w for w in caught if "past_key_values" in str(w.message) or "cache" in str(w.message)
        ]
        assert cache_warnings == [], [str(w.message) for w in cache_warnings]
