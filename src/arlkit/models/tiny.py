"""The embedded default policy: a tiny Qwen2-architecture model whose base is SFT on scripted demonstrations.

The demonstrations mix three strategies on purpose (DESIGN.md): answer from memory without searching, search
the first hop only, or search every hop. So the base model is imperfect — on held-out people, answering from
memory fails — and RL has a behaviour to reweight (the PASS@(k,T) paper's mechanism, arXiv 2604.14877).

Built on first use, cached under `$ARLKIT_CACHE` (default `~/.cache/arlkit`), deterministic from the recipe,
and saved with `save_pretrained` so it loads like any Hugging Face model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM

from arlkit.models.tokenizer import train_tokenizer
from arlkit.rollout.engine import Episode, RolloutParams
from arlkit.tasks import REWARD_ONLY_FIELDS, ToyWikiTask
from arlkit.train.sft import SFTParams, sft
from arlkit.trajectory import Trajectory

RECIPE_VERSION = 2  # bump when the recipe's code changes what it builds, so caches are rebuilt
STRATEGIES = ("none", "first_hop", "all_hops")


@dataclass(frozen=True)
class TinyRecipe:
    """Everything that determines the tiny base model; its hash names the cache folder."""

    task: ToyWikiTask = field(default_factory=ToyWikiTask)
    vocab_size: int = 1024
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 704
    max_position: int = 1024
    n_demos: int = 8000
    strategy_mix: tuple[float, float, float] = (0.4, 0.3, 0.3)  # none, first_hop, all_hops
    sft: SFTParams = field(default_factory=lambda: SFTParams(steps=1000, batch_size=32, lr=3e-3))
    seed: int = 0

    def key(self) -> str:
        fields = dataclasses.asdict(self)
        # reward settings change RL, not the base: they must not force a rebuild
        fields["task"] = {k: v for k, v in fields["task"].items() if k not in REWARD_ONLY_FIELDS}
        blob = json.dumps({"v": RECIPE_VERSION, **fields}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def cache_root() -> Path:
    return Path(os.environ.get("ARLKIT_CACHE", Path.home() / ".cache" / "arlkit"))


def _call_text(fmt: str, query: str) -> str:
    if fmt == "tags":
        return f"<search> {query}</search>"
    return f'<tool_call>{{"name": "search", "arguments": {{"query": " {query}"}}}}</tool_call>'


def demo_actions(row: dict, strategy: str, fmt: str = "hermes") -> list[str]:
    """The assistant turns of a scripted demonstration (text), ending with the gold answer.

    Names in queries and answers carry a leading space, as they do in the documents and questions, so a
    name has the same token ids wherever it appears and the tiny model can copy it (with Qwen2's
    pre-tokenisation "Ana" and " Ana" are different tokens).
    """
    if strategy == "none":
        return [f"I know this.<answer> {row['answer']}</answer>"]
    hops = list(row["hops"]) if strategy == "all_hops" else list(row["hops"][:1])
    calls = [f"I need {h}.{_call_text(fmt, h)}" for h in hops]
    return [*calls, f"So the answer is<answer> {row['answer']}</answer>"]


def scripted_trajectory(
    task: ToyWikiTask, tokenizer: PreTrainedTokenizerBase, row: dict, actions: list[str]
) -> Trajectory:
    """Tokenise assistant turns given as text through the rollout engine's own Episode, so the sequence has
    exactly the ids, roles and observation glue that rollouts have. Stops early if the episode ends."""
    params = RolloutParams(max_turns=task.max_turns, max_length=10_000)
    ep = Episode(task.make_env(), tokenizer, row, group_id=0, params=params)
    for text in actions:
        ids = tokenizer.encode(text, add_special_tokens=False)
        if "<answer>" in text:
            ids.append(
                tokenizer.eos_token_id
            )  # an answer turn ends the message; a call turn stops at </tool_call>
        ep.advance(ids)
        if ep.done:
            break
    return ep.traj


def demo_trajectory(
    task: ToyWikiTask, tokenizer: PreTrainedTokenizerBase, row: dict, strategy: str
) -> Trajectory:
    """A scripted demonstration of ``strategy`` (see :func:`demo_actions`), as SFT trains on."""
    traj = scripted_trajectory(task, tokenizer, row, demo_actions(row, strategy, task.fmt))
    traj.metadata["strategy"] = strategy
    return traj


def _demo_rows(recipe: TinyRecipe) -> list[tuple[dict, str]]:
    rng = random.Random(recipe.seed)
    rows = recipe.task.rows("sft", recipe.n_demos, seed=recipe.seed + 1)
    return [(row, rng.choices(STRATEGIES, weights=recipe.strategy_mix)[0]) for row in rows]


def _rendered_demos(recipe: TinyRecipe, tokenizer: PreTrainedTokenizerBase, n: int) -> list[str]:
    """Decoded text of a few demonstrations, so the final BPE also learns the chat and tool-call glue."""
    return [
        tokenizer.decode(demo_trajectory(recipe.task, tokenizer, row, s).token_ids)
        for row, s in _demo_rows(recipe)[:n]
    ]


def build_tokenizer(recipe: TinyRecipe) -> PreTrainedTokenizerBase:
    corpus = recipe.task.world.text_corpus()
    bootstrap = train_tokenizer(corpus, recipe.vocab_size)
    return train_tokenizer(corpus + _rendered_demos(recipe, bootstrap, 400), recipe.vocab_size)


def new_model(recipe: TinyRecipe, tokenizer: PreTrainedTokenizerBase) -> Qwen2ForCausalLM:
    torch.manual_seed(recipe.seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_kv_heads,
        max_position_embeddings=recipe.max_position,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def build_base(
    recipe: TinyRecipe, out_dir: Path, on_step: Callable[[int, float], None] | None = None
) -> dict[str, float]:
    """Train the tokenizer and the SFT base and save both to `out_dir`; returns build statistics."""
    tokenizer = build_tokenizer(recipe)
    demos = [demo_trajectory(recipe.task, tokenizer, row, s) for row, s in _demo_rows(recipe)]
    model = new_model(recipe, tokenizer)
    losses = sft(model, demos, tokenizer.pad_token_id, recipe.sft, on_step=on_step)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    stats = {
        "n_params": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "n_demos": len(demos),
        "mean_demo_tokens": sum(len(d) for d in demos) / len(demos),
        "final_sft_loss": sum(losses[-20:]) / min(20, len(losses)),
    }
    (out_dir / "arlkit_recipe.json").write_text(
        json.dumps(
            {"recipe": dataclasses.asdict(recipe), "key": recipe.key(), "stats": stats}, indent=2, default=str
        )
    )
    return stats


def ensure_base(
    recipe: TinyRecipe | None = None, on_step: Callable[[int, float], None] | None = None
) -> Path:
    """Path of the cached base for `recipe`, building it first if needed (atomically: build, then rename)."""
    recipe = recipe or TinyRecipe()
    final = cache_root() / f"tiny-{recipe.key()}"
    if (final / "arlkit_recipe.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=final.parent))
    try:
        build_base(recipe, tmp, on_step=on_step)
        if not final.exists():
            tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
