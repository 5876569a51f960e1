"""arlkit: reinforcement learning for tool-using LLM agents.

What a user's own task needs is importable from here: `TaskConfig` (its config section's base), `tool` and
`ToolResult` (its tools), `ToolEnv` (an env of tool calls) or `MessageEnv`/`EnvStep` (the general env
protocol, in messages), and `train` and `sft` (`arlkit.train(config, task=MyTask)`).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

__version__ = "0.1.0"

# oneDNN, and PyTorch's ideep layer over it, each keep up to 1,024 compiled CPU kernels, one per matmul shape
# (~0.6 MB each). Packed training forwards change shape with every micro-batch, so a SmolLM2 run's resident
# memory grew ~50 MB per RL step until the caches filled; 256 entries bound them at no measured cost in speed
# (docs/real_model.md "Memory"). Both are read at the first oneDNN call; a value already exported wins.
for _cache in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
    os.environ.setdefault(_cache, "256")

# loaded on first use, so `import arlkit` (and the CLI's start) stays light
_EXPORTS = {
    "EnvStep": "arlkit.envs.message_env",
    "MessageEnv": "arlkit.envs.message_env",
    "TaskConfig": "arlkit.config",
    "sft": "arlkit.api",
    "ToolEnv": "arlkit.envs.tool_env",
    "ToolResult": "arlkit.tools.base",
    "tool": "arlkit.tools.base",
}


def __getattr__(name: str) -> Any:
    if name == "train":  # the package arlkit.train is itself callable (train/__init__.py)
        return importlib.import_module("arlkit.train")
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'arlkit' has no attribute {name!r}")


__all__ = [
    "EnvStep",
    "MessageEnv",
    "TaskConfig",
    "ToolEnv",
    "ToolResult",
    "__version__",
    "sft",
    "tool",
    "train",
]
