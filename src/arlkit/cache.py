"""Where arlkit keeps what it builds once and reuses: tiny bases, toy databases, BM25 indexes."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_root() -> Path:
    """`$ARLKIT_CACHE`, default `~/.cache/arlkit`."""
    return Path(os.environ.get("ARLKIT_CACHE", Path.home() / ".cache" / "arlkit"))


def build_once(final: Path, build: Callable[[Path], None]) -> Path:
    """`final`, built by `build(tmp_path)` if it does not exist yet. The build writes to a temporary sibling that
    is then renamed, so a crashed or concurrent build never leaves a half-written `final`. `build` receives a
    path that does not exist yet (it creates a file or a folder there)."""
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=".building-", dir=final.parent))
    try:
        tmp = tmp_dir / final.name
        build(tmp)
        if not final.exists():
            tmp.rename(final)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return final
