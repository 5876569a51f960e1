"""The trajectory viewer: `arlkit inspect RUN` writes one self-contained HTML page of sample trajectories."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from arlkit.viewer.load import RunSamples, load_run
from arlkit.viewer.render import render_page

__all__ = ["RunSamples", "load_run", "render_page", "write_page"]


def write_page(
    run: str | Path, out: str | Path | None = None, limit: int = 64, tokenizer: Any = None
) -> Path:
    """Render the run folder's samples into ``out`` (default ``RUN/inspect.html``); returns its path."""
    samples = load_run(run, limit=limit, tokenizer=tokenizer)
    path = Path(out) if out is not None else samples.path / "inspect.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_page(samples), encoding="utf-8")
    return path
