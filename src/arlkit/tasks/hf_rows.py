"""Any task's rows from Hugging Face `datasets` (`task.dataset`): the "json", "parquet" or "csv" builder over
data files, a `save_to_disk` folder, or a Hub id when online; columns renamed to the keys the task's env reads.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from arlkit.cache import cache_root
from arlkit.config import DatasetConfig
from arlkit.errors import ArlkitError

OFFLINE_HINT = (
    "a Hub id needs network access; offline, give local files (path json, parquet or csv with data_files) "
    "or a folder written by save_to_disk"
)


def load_splits(cfg: DatasetConfig) -> dict[str, Any]:
    """The dataset's splits by name (a single Dataset is the split "train").

    Raises:
        ArlkitError: `datasets` is not installed, or the data cannot be loaded (the message says why).
    """
    try:
        import datasets
    except ImportError:
        raise ArlkitError("task.dataset needs datasets: pip install 'arlkit[datasets]'") from None
    folder = Path(cfg.path).expanduser()
    try:
        if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
            loaded = datasets.load_from_disk(str(folder))
        else:
            cache = str(cache_root() / "datasets")
            loaded = datasets.load_dataset(cfg.path, data_files=cfg.data_files, cache_dir=cache)
    except Exception as e:  # datasets raises many types (missing file, Hub errors, bad format)
        hint = "" if cfg.data_files or folder.exists() else f"; {OFFLINE_HINT}"
        raise ArlkitError(f"task.dataset: cannot load {cfg.path!r}: {type(e).__name__}: {e}{hint}") from None
    return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}


class DatasetRowsTask:
    """The wrapped task, except that its rows come from `cfg`'s dataset (its env, tools, labels unchanged)."""

    def __init__(self, task: Any, cfg: DatasetConfig):
        self.task, self.cfg = task, cfg
        self.splits = load_splits(cfg)

    def rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        """Up to `n` rows of the dataset split that `split` maps to, shuffled by `seed`."""
        name = self.cfg.splits.get(split, split)
        if name not in self.splits:
            raise ArlkitError(
                f"task.dataset has no split {name!r} (the task's {split!r}); it has {sorted(self.splits)}: "
                f"map one in task.dataset.splits, e.g. {{{split}: {sorted(self.splits)[0]}}}"
            )
        data = self.splits[name]
        missing = sorted(set(self.cfg.columns.values()) - set(data.column_names))
        if missing:
            raise ArlkitError(f"task.dataset.columns: {missing} are not columns of {data.column_names}")
        order = list(range(len(data)))
        random.Random(seed).shuffle(order)
        return [self._row(data[i], i) for i in order[:n]]

    def _row(self, record: dict, index: int) -> dict:
        row = {**record, **{key: record[col] for key, col in self.cfg.columns.items()}}
        row.setdefault("id", index)
        return row

    def __getattr__(self, name: str) -> Any:
        return getattr(self.task, name)
