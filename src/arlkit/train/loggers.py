"""Optional metric sinks beside metrics.jsonl and TensorBoard: Weights & Biases (`train.wandb: true`)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from arlkit.config import Config
from arlkit.errors import ArlkitError
from arlkit.train.run_dir import MetricLogger

WANDB_ID_FILE = "wandb_id.txt"  # the W&B run id, so a resumed run continues the same W&B run


class WandbLogger:
    """Logs each step's metrics to a W&B run named after the run folder. wandb is imported only here, only
    when enabled: it is an optional extra (`pip install 'arlkit[wandb]'`)."""

    def __init__(self, project: str, run_path: Path, config: dict[str, Any]):
        try:
            wandb = importlib.import_module("wandb")
        except ImportError:
            raise ArlkitError(
                "train.wandb is true but wandb is not installed: pip install 'arlkit[wandb]' "
                "(or set train.wandb=false)"
            ) from None
        id_file = run_path / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else wandb.util.generate_id()
        id_file.write_text(run_id)
        self.run = wandb.init(
            project=project,
            name=run_path.name,
            id=run_id,
            resume="allow",
            dir=str(run_path),
            config=config,
        )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


def build_loggers(cfg: Config, run_path: Path) -> list[MetricLogger]:
    """The extra metric sinks the config asks for."""
    if not cfg.train.wandb:
        return []
    return [WandbLogger(cfg.train.wandb_project, run_path, cfg.model_dump(mode="json"))]
