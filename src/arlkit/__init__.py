"""arlkit: reinforcement learning for tool-using LLM agents.

What a user's own task needs is importable from here: `TaskConfig` (its config section's base), `tool` and
`ToolResult` (its tools), `ToolEnv` (an env of tool calls) or `MessageEnv`/`EnvStep` (the general env
protocol, in messages), and `train` and `sft` (`arlkit.train(config, task=MyTask)`).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

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
