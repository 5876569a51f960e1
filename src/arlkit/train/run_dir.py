"""The run folder: resolved config, metrics.jsonl, TensorBoard events, samples, checkpoints and plots.

A folder holds one run. `RunDir` locks it (run_lock.py) so that a second process cannot write into it
while the first runs, and, asked to start a new run (`mode="new"`), refuses a folder that already holds
one rather than appending to its logs and replacing its checkpoints.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml

from arlkit.errors import ArlkitError
from arlkit.train.run_lock import lock_folder, unlock_folder
from arlkit.trajectory import Trajectory, json_floats
from arlkit.viewer.tokens import token_pieces

# new: refuse a folder that holds a run; resume: continue the one it holds; overwrite: delete it first;
# append: write beside whatever is there (SFT stages, analyses, tests that build a Setup by hand)
RunMode = Literal["new", "resume", "overwrite", "append"]
# what a run writes that another run would append to or replace (not config.yaml and tensorboard/, which a
# run writes before its first step, so a failed start does not count as a run)
RUN_ARTEFACTS = ("metrics.jsonl", "summary.json", "checkpoints")
# what --overwrite deletes: every file a run writes, and nothing else the user may keep in the folder
OVERWRITTEN = (*RUN_ARTEFACTS, "config.yaml", "tensorboard", "curves.png", "inspect.html")


def held_run(path: Path) -> list[str]:
    """What in the folder shows a run was there (empty: none was)."""
    found = []
    metrics = path / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size:
        found.append(f"metrics.jsonl up to step {_last_step(metrics)}")
    ckpts = sorted(p.name for p in (path / "checkpoints").glob("*") if not p.name.startswith("."))
    if ckpts:
        found.append(f"checkpoints {', '.join(ckpts)}")
    if (path / "summary.json").is_file():
        found.append("summary.json")
    return found


def _last_step(metrics: Path) -> str:
    try:
        return str(json.loads(metrics.read_text().splitlines()[-1])["step"])
    except (ValueError, KeyError, IndexError, TypeError):  # a row cut short by a kill: still a run
        return "?"


def clear_run(path: Path) -> list[str]:
    """Delete a previous run's files (OVERWRITTEN and the *.jsonl logs); returns their names."""
    gone = [p for p in (*(path / n for n in OVERWRITTEN), *path.glob("*.jsonl")) if p.exists()]
    for p in dict.fromkeys(gone):
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return sorted({p.name for p in gone})


class MetricLogger(Protocol):
    """A sink for the run's metrics besides metrics.jsonl and TensorBoard."""

    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def close(self) -> None: ...


class RunDir:
    """Writes everything a run produces under one folder; metrics are namespaced `section/name`."""

    def __init__(
        self,
        path: str | Path,
        tensorboard: bool = True,
        loggers: Sequence[MetricLogger] = (),
        mode: RunMode = "append",
    ):
        """Open (and lock) the run folder `path`; `mode` says what to do with a run it holds already.

        Raises:
            ArlkitError: the path is a file or cannot be created, another process holds the folder, or (mode
                "new") the folder holds a run already.
        """
        self.path = Path(path)
        self.loggers = tuple(loggers)  # more sinks for the same metrics (Weights & Biases, train/loggers.py)
        if self.path.exists() and not self.path.is_dir():
            raise ArlkitError(f"train.run_dir {str(self.path)!r} is a file; give a folder (new or a run's)")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # permissions, a read-only disk, a parent that is a file
            raise ArlkitError(f"cannot create the run folder train.run_dir {str(self.path)!r}: {e}") from None
        lock_folder(self.path)  # before looking at what the folder holds: another run may be writing it
        self.cleared: list[str] = []  # what mode "overwrite" deleted
        held = held_run(self.path)
        if mode == "new" and held:
            unlock_folder(self.path)
            raise ArlkitError(
                f"train.run_dir {str(self.path)!r} already holds a run ({'; '.join(held)}): continue it with "
                "--resume, replace it with --overwrite (deletes its logs and checkpoints), or give another "
                "train.run_dir"
            )
        if mode == "overwrite":
            self.cleared = clear_run(self.path)
        (self.path / "checkpoints").mkdir(exist_ok=True)
        self._tb = self._tensorboard() if tensorboard else None

    def _tensorboard(self, purge_step: int | None = None) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is an optional extra
            return None
        return SummaryWriter(str(self.path / "tensorboard"), purge_step=purge_step)

    def write_config(self, config: dict[str, Any]) -> None:
        (self.path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        clean = {k: (float(v) if math.isfinite(float(v)) else None) for k, v in metrics.items()}
        with (self.path / "metrics.jsonl").open("a") as f:
            f.write(json.dumps({"step": step, **clean}) + "\n")
        if self._tb is not None:
            for k, v in clean.items():
                if v is not None:
                    self._tb.add_scalar(k, v, step)
        for logger in self.loggers:
            logger.log(step, {k: v for k, v in clean.items() if v is not None})

    def log_sizes(self) -> dict[str, int]:
        """Byte size of each JSONL log: where `rewind` cuts them back to on resume."""
        return {p.name: p.stat().st_size for p in sorted(self.path.glob("*.jsonl"))}

    def rewind(self, sizes: dict[str, int], step: int) -> None:
        """Cut the logs back to `sizes` (a checkpoint's `log_sizes`), deleting logs begun after it, so a resumed
        run appends to logs with neither duplicates nor gaps; TensorBoard hides its events after `step`."""
        for p in self.path.glob("*.jsonl"):
            if p.name not in sizes:
                p.unlink()
                continue
            with p.open("r+b") as f:
                f.truncate(sizes[p.name])
        if self._tb is not None:
            self._tb.close()
            self._tb = self._tensorboard(purge_step=step + 1)

    def write_samples(
        self,
        step: int,
        trajs: Sequence[Trajectory],
        tokenizer: Any,
        name: str = "samples",
        advantages: Sequence[Sequence[float]] | None = None,
    ) -> None:
        """Append one JSON row per trajectory to `{name}.jsonl` (what `arlkit inspect` renders).

        Besides `Trajectory.to_dict`, a row holds `step`, `index` (position in `trajs`: what `parent`
        refers to for branched rollouts), the decoded `text`, `token_text` (each token's piece of it, for
        viewers) and, when given, `advantages`: one value per token, e.g. the rows of the (B, T)
        advantage tensor (padding beyond each trajectory's length is cut off).
        """
        if advantages is not None and len(advantages) < len(trajs):
            raise ValueError(f"advantages has {len(advantages)} rows for {len(trajs)} trajectories")
        with (self.path / f"{name}.jsonl").open("a") as f:
            for i, t in enumerate(trajs):
                row = {"step": step, "index": i, "text": tokenizer.decode(t.token_ids), **t.to_dict()}
                row["token_text"] = token_pieces(tokenizer, t.token_ids)
                if advantages is not None:
                    values = advantages[i][: len(t)]  # a tensor row or a list
                    row["advantages"] = json_floats(values.tolist() if hasattr(values, "tolist") else values)
                f.write(json.dumps(row, default=str) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        p = self.path / "metrics.jsonl"
        return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []

    def eval_metrics(self, step: int) -> dict[str, float]:
        """The logged `eval/` metrics of `step`, without the prefix (e.g. the base evaluation of a resumed run)."""
        rows = [r for r in self.read_metrics() if r["step"] == step]
        return {k.removeprefix("eval/"): v for r in rows for k, v in r.items() if k.startswith("eval/")}

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        (self.path / name).write_text(json.dumps(data, indent=2, default=str))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        for logger in self.loggers:
            logger.close()
        unlock_folder(self.path)
