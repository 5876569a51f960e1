"""Many episodes per question from one policy: the sampling behind PASS@(k,T) and CEA.

A policy is opened through the trainer's own `setup` (same task, same rollout backend, same loading of plain,
LoRA-free, routed or Hugging Face models), so an analysis measures exactly the policy that training produced.
The n episodes of a question are consecutive rows of one rollout call with one group id, so a backend that
shares prompt prefill (the continuous-batching engine's `share_prompt_prefill`) prefills each prompt once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console

from arlkit.config import Config
from arlkit.errors import ArlkitError
from arlkit.rollout.engine import rollout
from arlkit.train.loop import rollout_params
from arlkit.train.setup import Setup, setup
from arlkit.trajectory import Trajectory


def patched(cfg: Config, changes: dict[str, Any]) -> Config:
    """`cfg` with dotted fields replaced (`{"model.path": p}`), validated again.

    Raises:
        ArlkitError: a replaced value is invalid (the message names the field).
    """
    data = cfg.model_dump()
    for key, value in changes.items():
        *sections, name = key.split(".")
        node = data
        for sec in sections:
            node = node.setdefault(sec, {})
        node[name] = value
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ArlkitError(f"invalid settings for an analysis policy: {e}") from None


@contextlib.contextmanager
def opened_policy(
    cfg: Config, path: str, folder: Path, console: Console, routing: dict | None = None
) -> Iterator[Setup]:
    """The trainer's Setup for the policy at `path` (`routing`: a role-routed pair, e.g. a CEA hybrid), with
    `folder` as its run folder (it keeps the resolved config.yaml and sample trajectories).

    Evaluation needs no KL reference, critic or fresh LoRA adapters, so the config's are switched off.
    """
    c = patched(
        cfg,
        {
            "model.path": str(path),
            "model.routing": routing,
            "model.lora": None,
            "algo.kl_coef": 0.0,
            "algo.advantage": "grpo",
            "critic.kind": "none",
            "train.run_dir": str(folder),
        },
    )
    s = setup(c, console)
    try:
        yield s
    finally:
        s.run.close()
        # nothing is trained or logged here: drop the run folder's empty checkpoint and TensorBoard parts
        shutil.rmtree(s.run.path / "tensorboard", ignore_errors=True)
        with contextlib.suppress(OSError):
            (s.run.path / "checkpoints").rmdir()


def question_rows(task: Any, split: str, n: int, seed: int) -> list[dict]:
    """`n` distinct questions of `split` (fewer if the split has fewer): a task's sampler may repeat a question,
    and a repeated question would count twice in every per-question statistic."""
    rows: list[dict] = []
    seen: set[str] = set()
    for row in task.rows(split, 2 * n, seed=seed):  # a seeded sampler's first n rows are a prefix of 2n
        key = str(row.get("question"))
        if key not in seen:
            seen.add(key)
            rows.append(row)
    return rows[:n]


@dataclass(frozen=True)
class QuestionCounts:
    """Per question (Q,): correct episodes out of n, and mean tool rounds per episode."""

    correct: list[int]
    tool_rounds: list[float]
    samples: list[Trajectory]  # the first episode of each of the first questions, for the viewer


def capped_env(make_env: Callable[[], Any], cap: int | None, answer_turns: int) -> Callable[[], Any]:
    """An env factory whose envs allow at most `cap` tool rounds (None: the env as it is)."""
    if cap is None:
        return make_env
    env = make_env()
    if not callable(getattr(env, "limit_tool_rounds", None)):  # a message env has no tool rounds
        raise ArlkitError(
            f"passk.caps: the task's env ({type(env).__name__}) has no tool rounds to cap; PASS@(k,T) caps "
            "the tool rounds of a ToolEnv"
        )
    return lambda: make_env().limit_tool_rounds(cap, answer_turns)


def is_correct(traj: Trajectory) -> bool:
    """An episode is correct when its answer matches the gold (EM = 1), whatever its format reward."""
    return traj.metadata.get("metrics", {}).get("em", 0.0) >= 1.0


def sample_counts(
    s: Setup,
    rows: Sequence[dict],
    n: int,
    *,
    cap: int | None = None,
    answer_turns: int = 2,
    questions_per_batch: int = 8,
    n_samples: int = 8,
    on_batch: Callable[[int], None] | None = None,
) -> QuestionCounts:
    """n episodes per row at the config's sampling temperature (`rollout.temperature`), at most `cap` tool
    rounds each with `max_turns = cap + answer_turns`; `on_batch(episodes)` after each rollout call."""
    params = rollout_params(s.cfg, s.cfg.rollout.temperature)
    if cap is not None:
        params = dataclasses.replace(params, max_turns=cap + answer_turns)
    make_env = capped_env(s.task.make_env, cap, answer_turns)
    correct: list[int] = []
    rounds: list[float] = []
    samples: list[Trajectory] = []
    for start in range(0, len(rows), questions_per_batch):
        chunk = rows[start : start + questions_per_batch]
        batch_rows = [r for r in chunk for _ in range(n)]  # the n episodes of a question are adjacent
        groups = [start + q for q in range(len(chunk)) for _ in range(n)]
        trajs = rollout(s.generator, s.policy.tokenizer, make_env, batch_rows, groups, params)
        for q in range(len(chunk)):
            episodes = trajs[q * n : (q + 1) * n]
            correct.append(sum(is_correct(t) for t in episodes))
            rounds.append(sum(t.metadata["metrics"].get("tool_rounds", 0.0) for t in episodes) / n)
            if len(samples) < n_samples:
                samples.append(episodes[0])
        if on_batch is not None:
            on_batch(len(trajs))
    return QuestionCounts(correct, rounds, samples)


def load_cached(folder: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The data `save_cached` wrote to `folder` under exactly these settings, else None."""
    f = folder / "counts.json"
    if not f.is_file():
        return None
    saved = json.loads(f.read_text())
    return saved["data"] if saved.get("settings") == json.loads(json.dumps(settings, default=str)) else None


def save_cached(folder: Path, settings: dict[str, Any], data: dict[str, Any]) -> None:
    """Keep sampled counts with everything they depend on, so a later run with the same settings reuses them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "counts.json").write_text(json.dumps({"settings": settings, "data": data}, default=str))


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".json")


def checkpoint_fingerprint(path: str) -> list[list[Any]]:
    """(file, size, mtime) of a local checkpoint's weight and config files, its subfolders' too (2-Agent pairs):
    a checkpoint saved again under the same path gets a new fingerprint. Empty for a hub id."""
    root = Path(path).expanduser()
    if not root.is_dir():
        return []
    files = sorted(
        f for f in [*root.glob("*"), *root.glob("*/*")] if f.is_file() and f.suffix in WEIGHT_SUFFIXES
    )
    return [[str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def sampling_settings(cfg: Config, path: str, rows: Sequence[dict], **extra: Any) -> dict[str, Any]:
    """What sampled counts depend on: the policy's path and its files' fingerprint, the sampling and task
    settings, the seed and the questions."""
    r = cfg.rollout
    return {
        "path": path,
        "fingerprint": checkpoint_fingerprint(path),
        "temperature": r.temperature,
        "top_p": r.top_p,
        "max_new_tokens": r.max_new_tokens,
        "max_length": r.max_length,
        "task": cfg.task.model_dump(),
        "seed": cfg.train.seed,
        "questions": [row.get("question") for row in rows],
        **extra,
    }
