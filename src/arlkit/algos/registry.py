"""Name → function registries: a decorator fills a dict, rejects duplicates, and an unknown name lists the
valid ones. All entries of one registry share one signature, so no caller branches on a name."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Generic, TypeVar

from arlkit.errors import ArlkitError

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        def deco(fn: F) -> F:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = fn
            return fn

        return deco

    def get(self, name: str) -> F:
        if name not in self._items:
            raise ArlkitError(f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(self._items))}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)


def import_all_algos() -> None:
    """Import every module of `arlkit.algos`, so every registration has run before names are checked."""
    import arlkit.algos

    for module in pkgutil.iter_modules(arlkit.algos.__path__):
        importlib.import_module(f"arlkit.algos.{module.name}")
