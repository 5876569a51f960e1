"""The algorithm registries use arlkit's one Registry type (kept torch-free in `arlkit.registry`, so tasks and
tools can register without importing torch)."""

from arlkit.registry import Registry

__all__ = ["Registry"]
