"""The embedded default policy: a tiny Qwen2-architecture model whose base is SFT on scripted demonstrations.

The demonstrations come from a toy task (`ToyTask`: toywiki, toysql, math_python) and mix its strategies on
purpose (DESIGN.md): for toywiki, answer from memory without searching, search the first hop only, or search
every hop. So the base model is imperfect — on held-out people, answering from memory fails — and RL has a
behaviour to reweight (the PASS@(k,T) paper's mechanism, arXiv 2604.14877).

Built on first use, cached under `$ARLKIT_CACHE` (default `~/.cache/arlkit`), deterministic from the recipe,
and saved with `save_pretrained` so it loads like any Hugging Face model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM

from arlkit.cache import build_once, cache_root
from arlkit.errors import ArlkitError
from arlkit.models.tokenizer import train_tokenizer
from arlkit.rollout.engine import Episode, RolloutParams
from arlkit.tasks import REWARD_ONLY_FIELDS, ToyTask, ToyWikiTask
from arlkit.train.sft import SFTParams, sft
from arlkit.trajectory import Trajectory

# SFTParams fields added since RECIPE_VERSION 3, with the value that builds what version 3 built
SFT_FIELDS_SINCE_V3 = {"micro_batch_tokens": None, "precision": "fp32"}
RECIPE_VERSION = 3  # bump when the recipe's code changes what it builds, so caches are rebuilt
__all__ = [
    "TinyRecipe",
    "build_base",
    "build_tokenizer",
    "cache_root",
    "demo_trajectory",
    "ensure_base",
    "scripted_trajectory",
]


@dataclass(frozen=True)
class TinyRecipe:
    """Everything that determines the tiny base model; its hash names the cache folder."""

    task: ToyTask = field(default_factory=ToyWikiTask)
    vocab_size: int = 1024
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 704
    max_position: int = 1024
    n_demos: int = 8000
    # weights of task.demo_strategies, in order. For toywiki the greedy base searches the first hop only (it
    # answers 1-hop questions and fails multi-hop ones): RL has a behaviour to reweight. Copying names from
    # search results is learnt late and suddenly: with half the demonstrations answering from memory it was
    # not learnt in 600 steps (1-hop held-out answer accuracy 0.04 against 1.0 with this mix)
    strategy_mix: tuple[float, ...] = (0.3, 0.3, 0.4)
    # lr 1e-3, not higher: at 3e-3 the model never learned to copy names from search results (600 steps,
    # teacher-forced answer accuracy 0.14 against 0.64 at 1e-3). 1000 steps, not 700: copying a year (four
    # digit tokens) into the answer is learnt last, and at 700 steps it was a coin toss between builds (recipe
    # seed 1: greedy 1-hop year EM 0.00 at 700 steps, 0.88 at 1000; a lower lr floor at 700 did not help)
    sft: SFTParams = field(default_factory=lambda: SFTParams(steps=1000, batch_size=32, lr=1e-3))
    seed: int = 0

    @classmethod
    def for_task(cls, task: ToyTask) -> TinyRecipe:
        """The recipe for `task`: the defaults with the task's `tiny_recipe` overrides (a smaller model or
        shorter SFT where the task's text is simpler)."""
        overrides = dict(task.tiny_recipe)
        if "sft" in overrides:
            overrides["sft"] = SFTParams(**overrides["sft"])
        return cls(task=task, **overrides)

    def key(self) -> str:
        fields = dataclasses.asdict(self)
        # reward settings change RL, not the base: they must not force a rebuild
        fields["task"] = {k: v for k, v in fields["task"].items() if k not in REWARD_ONLY_FIELDS}
        # SFT options added after the key's first version are hashed only when set, so built bases keep their key
        for name, default in SFT_FIELDS_SINCE_V3.items():
            if fields["sft"].get(name) == default:
                del fields["sft"][name]
        if self.task.name != "toywiki":  # toywiki keys predate task names: leaving it out keeps built bases
            fields["task_name"] = self.task.name
        blob = json.dumps({"v": RECIPE_VERSION, **fields}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def scripted_trajectory(
    task: ToyTask, tokenizer: PreTrainedTokenizerBase, row: dict, actions: list[str]
) -> Trajectory:
    """Tokenise assistant turns given as text through the rollout engine's own Episode, so the sequence has
    exactly the ids, roles and observation glue that rollouts have. Stops early if the episode ends."""
    # the script bounds the turns; the env still ends the episode at its own max_turns
    params = RolloutParams(max_turns=max(len(actions), 1), max_length=10_000)
    ep = Episode(task.make_env(), tokenizer, row, group_id=0, params=params)
    for text in actions:
        ids = tokenizer.encode(text, add_special_tokens=False)
        if "<answer>" in text:
            ids.append(
                tokenizer.eos_token_id
            )  # an answer turn ends the message; a call turn stops at its closer
        ep.advance(ids)
        if ep.done:
            break
    return ep.traj


def demo_trajectory(
    task: ToyTask, tokenizer: PreTrainedTokenizerBase, row: dict, strategy: str
) -> Trajectory:
    """A scripted demonstration of ``strategy`` (the task's `demo_actions`), as SFT trains on."""
    traj = scripted_trajectory(task, tokenizer, row, task.demo_actions(row, strategy))
    traj.metadata["strategy"] = strategy
    return traj


def _demo_rows(recipe: TinyRecipe) -> list[tuple[ToyTask, dict, str]]:
    """(task, row, strategy) of each SFT demonstration; a task with `demo_sources` (toywiki) says which
    world each row comes from, others use their "sft" split."""
    task = recipe.task
    strategies = task.demo_strategies
    if len(recipe.strategy_mix) != len(strategies):
        raise ArlkitError(
            f"strategy_mix {recipe.strategy_mix} needs one weight per strategy of task "
            f"{task.name!r}: {strategies}"
        )
    rng = random.Random(recipe.seed)
    if hasattr(task, "demo_sources"):
        sources = task.demo_sources(recipe.n_demos, seed=recipe.seed + 1)
    else:
        sources = [(task, row) for row in task.rows("sft", recipe.n_demos, seed=recipe.seed + 1)]
    return [(t, row, rng.choices(strategies, weights=recipe.strategy_mix)[0]) for t, row in sources]


def _rendered_demos(recipe: TinyRecipe, tokenizer: PreTrainedTokenizerBase, n: int) -> list[str]:
    """Decoded text of a few demonstrations, so the final BPE also learns the chat and tool-call glue."""
    return [
        tokenizer.decode(demo_trajectory(t, tokenizer, row, s).token_ids)
        for t, row, s in _demo_rows(recipe)[:n]
    ]


def build_tokenizer(recipe: TinyRecipe) -> PreTrainedTokenizerBase:
    corpus, extra = recipe.task.text_corpus(), recipe.task.extra_tokens
    bootstrap = train_tokenizer(corpus, recipe.vocab_size, extra)
    return train_tokenizer(corpus + _rendered_demos(recipe, bootstrap, 400), recipe.vocab_size, extra)


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
    demos = [demo_trajectory(t, tokenizer, row, s) for t, row, s in _demo_rows(recipe)]
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

    def build(tmp: Path) -> None:
        tmp.mkdir()
        build_base(recipe, tmp, on_step=on_step)

    return build_once(cache_root() / f"tiny-{recipe.key()}", build)
