"""Reading a run folder's sample trajectories for the viewer: which files, which rows, per-token text."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from arlkit.errors import ArlkitError
from arlkit.viewer.tokens import token_pieces

__all__ = ["RunSamples", "group_by_step", "load_run", "select_rows"]


@dataclass
class RunSamples:
    """The rows of each sample file (``samples``, ``eval_base``, …) plus what the page header shows."""

    path: Path
    sources: dict[str, list[dict]]  # file stem -> rows, in file order
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    skipped_lines: int = 0  # unreadable lines (e.g. the last line of a run killed mid-write)


def _read_jsonl(path: Path) -> tuple[list[dict], int]:
    rows, bad = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(row, dict) and isinstance(row.get("token_ids"), list):
            rows.append(row)
        else:
            bad += 1
    return rows, bad


def _read_optional(path: Path, parse: Callable[[str], Any]) -> dict:
    try:
        data = parse(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def group_by_step(rows: list[dict]) -> dict[Any, list[dict]]:
    """Rows by their `step`, in order of first appearance."""
    out: dict[Any, list[dict]] = {}
    for r in rows:
        out.setdefault(r.get("step"), []).append(r)
    return out


def select_rows(rows: list[dict], limit: int) -> list[dict]:
    """At most ``limit`` rows, whole steps at a time, from steps spread evenly from the first to the last.

    Whole steps keep a step's branched rollouts together, so its branch tree is complete.
    """
    if len(rows) <= limit:
        return rows
    by_step = group_by_step(rows)
    steps = list(by_step)
    per_step = max(1, len(rows) // len(steps))
    k = max(1, min(len(steps), limit // per_step))
    picks = sorted({round(i * (len(steps) - 1) / max(k - 1, 1)) for i in range(k)})
    chosen = [r for i in picks for r in by_step[steps[i]]]
    return chosen[:limit]


def load_run(path: str | Path, limit: int = 64, tokenizer: Any = None) -> RunSamples:
    """Sample rows of a run folder (``samples.jsonl`` and ``eval_*.jsonl``), at most ``limit`` per file.

    Rows written before per-token text was stored get it from ``tokenizer``, or else from the run's own
    tokenizer (see :func:`_run_tokenizer`).

    Raises:
        ArlkitError: the folder does not exist or holds no sample file.
    """
    run = Path(path)
    if not run.is_dir():
        raise ArlkitError(f"run folder {str(run)!r} does not exist")
    files = sorted(run.glob("samples*.jsonl")) + sorted(run.glob("eval_*.jsonl"))
    if not files:
        raise ArlkitError(
            f"run folder {str(run)!r} has no samples.jsonl or eval_*.jsonl; is it an arlkit run folder "
            "(train.n_samples > 0)?"
        )
    sources: dict[str, list[dict]] = {}
    skipped = 0
    for f in files:
        rows, bad = _read_jsonl(f)
        skipped += bad
        sources[f.stem] = select_rows(rows, limit)
    config = _read_optional(run / "config.yaml", yaml.safe_load)
    missing = [r for rows in sources.values() for r in rows if not isinstance(r.get("token_text"), list)]
    if missing:
        tok = tokenizer if tokenizer is not None else _run_tokenizer(run, config)
        for r in missing:
            r["token_text"] = token_pieces(tok, r["token_ids"])
    summary = _read_optional(run / "summary.json", json.loads)
    return RunSamples(run, sources, config, summary, skipped)


def _run_tokenizer(run: Path, config: dict) -> Any:
    """The tokenizer of a run: its final checkpoint, else its latest one, else the config's model.path."""
    from arlkit.models.loading import load_tokenizer

    ckpts = run / "checkpoints"
    saved = sorted((p for p in ckpts.glob("step_*") if p.name[5:].isdigit()), key=lambda p: int(p.name[5:]))
    for candidate in [ckpts / "final", *reversed(saved)]:
        if (candidate / "tokenizer_config.json").is_file():
            return load_tokenizer(candidate)
    model = config.get("model") or {}
    if model.get("path") and model["path"] != "tiny":
        return load_tokenizer(model["path"], gguf_file=model.get("gguf_file"))
    raise ArlkitError(
        f"the samples in {str(run)!r} have no per-token text and the run has no saved tokenizer "
        "(checkpoints/final); pass one with --tokenizer PATH"
    )
