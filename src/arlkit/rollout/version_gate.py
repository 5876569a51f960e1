"""The weights version a shared rollout server holds, and the lock that changes it (docs/async.md).

With asynchronous rollouts on the vLLM backend every producer generates on the one server, so the trainer
cannot hand each a private copy: it writes its weights into the server at a version boundary. Generation
holds a *read* of the gate while it must see one version (a whole batch, or with partial rollouts a single
turn); a weight sync holds the *write*, so it waits for those reads to end and no generation straddles it. A
sync that is waiting keeps new reads out, so producers that keep generating cannot starve it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class VersionGate:
    """A readers–writer lock (writers first) around the version number of a server's weights."""

    def __init__(self, version: int = 0):
        self.version = version
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[int]:
        """Hold the current weights while generating; yields their version."""
        with self._cond:
            while self._writing or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
            version = self.version
        try:
            yield version
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self, version: int | None = None) -> Iterator[None]:
        """Change the weights once every read has ended; `version` becomes current if the body returns (None:
        the same version, e.g. the same weights written again)."""
        with self._cond:
            self._writers_waiting += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
            if version is not None:
                self.version = version
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()
