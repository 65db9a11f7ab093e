"""A least-recently-used map bounded in bytes: the caches of the read path (open files, decoded
row groups, part indexes) are all one of these, each with its own budget and size measure.

Not thread-safe by itself: its owner calls it under its own lock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["ByteLRU"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ByteLRU(Generic[K, V]):
    """Entries by key, least recently used first out once their sizes pass ``budget`` (the
    ``keep`` most recent stay whatever their size, so one big entry is still cached)."""

    def __init__(self, budget: int, size: Callable[[V], int], keep: int = 0) -> None:
        self.budget = budget
        self._size = size
        self._keep = keep
        self._entries: OrderedDict[K, V] = OrderedDict()
        self.nbytes = 0

    def get(self, key: K) -> V | None:
        """The entry, now the most recently used; None when absent."""
        hit = self._entries.get(key)
        if hit is not None:
            self._entries.move_to_end(key)
        return hit

    def put(self, key: K, value: V) -> V:
        """Add ``value`` unless ``key`` is there already; returns the entry kept."""
        held = self._entries.get(key)
        if held is not None:
            return held
        self._entries[key] = value
        self.nbytes += self._size(value)
        while self.nbytes > self.budget and len(self._entries) > self._keep:
            _, old = self._entries.popitem(last=False)
            self.nbytes -= self._size(old)
        return value

    def pop_where(self, drop: Callable[[K], bool]) -> list[V]:
        """Remove the entries whose key ``drop`` picks; returns them."""
        gone = [self._entries.pop(k) for k in [k for k in self._entries if drop(k)]]
        self.nbytes -= sum(self._size(v) for v in gone)
        return gone

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)
