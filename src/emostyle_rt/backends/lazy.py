"""The one lazy-loading wrapper: runners (or anything costly) created on first use, once, under a lock."""

from __future__ import annotations

import threading
from typing import Any, Callable, ContextManager, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Lazy(dict[K, V]):
    """A dict whose values are created on first use by :meth:`load`: once per key, whatever the threads.

    A value already there is returned without taking the lock (a dict read is
    atomic); otherwise the lock is taken, the key checked again, and ``make()``
    runs once. Several wrappers may share one lock (the Stylizer's graphs, the
    tiled executor's graphs and engines). Being a dict, it is emptied and
    closed by whatever empties dicts of runners.
    """

    def __init__(self, lock: ContextManager[Any] | None = None) -> None:
        """Args:
            lock: The lock that serialises loads (default: a new ``threading.RLock``, so ``make`` may load
                another key of a wrapper that shares it).
        """
        super().__init__()
        self.lock = lock if lock is not None else threading.RLock()

    def load(self, key: K, make: Callable[[], V | None]) -> V | None:
        """The value of ``key``, made by ``make()`` under the lock if there is none yet.

        Args:
            key: What is loaded (a graph key, a file name, a window).
            make: Creates the value; it runs at most once per key while its results are kept. A ``None`` result
                is returned and not kept (``make`` runs again on the next call).
        """
        value = self.get(key)
        if value is None:
            with self.lock:
                value = self.get(key)
                if value is None:
                    value = make()
                    if value is not None:
                        self[key] = value
        return value

    def drain(self) -> list[V]:
        """Empty the wrapper under its lock and return what it held (for the caller to close outside the lock)."""
        with self.lock:
            values = list(self.values())
            self.clear()
        return values
