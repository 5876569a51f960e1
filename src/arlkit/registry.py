"""Name → entry registries: a decorator fills a dict, rejects duplicates, and an unknown name lists the valid
ones. All entries of one registry share one signature, so no caller branches on a name; what an entry needs from
its caller (a critic, a greedy baseline) is declared as metadata at registration. Torch-free: tasks use it too."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from arlkit.errors import ArlkitError

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, F] = {}
        self._info: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **info: Any) -> Callable[[F], F]:
        """Register under `name`; keyword `info` (e.g. needs_values=True) is read back with `info`."""

        def deco(fn: F) -> F:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = fn
            self._info[name] = dict(info)
            return fn

        return deco

    def get(self, name: str) -> F:
        self.check(name)
        return self._items[name]

    def info(self, name: str) -> dict[str, Any]:
        self.check(name)
        return self._info[name]

    def check(self, name: str) -> None:
        if name not in self._items:
            raise ArlkitError(f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(self._items))}")

    def names(self) -> list[str]:
        return sorted(self._items)
