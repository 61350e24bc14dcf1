"""A small in-process cache of rows the API reads on every request (callers, versions).

PostgreSQL stays the truth. The process's listener (api/status_listener.py) trusts a cache
only while its LISTEN connection is up, and clears it when a change is announced
(db/repositories/cache_notices.py), when it connects and when it loses the connection. The
TTL bounds what a writer that announces nothing (an operator's own SQL) can leave stale.
"""

import time
from typing import Generic, TypeVar

V = TypeVar("V")


class Cache(Generic[V]):
    def __init__(self, ttl_s: float, max_items: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_items = max_items
        self.trusted = False  # set by the listener: nothing is served while it is deaf
        # Bumped by every clear: a value read before a change was heard is never stored.
        self.generation = 0
        self._items: dict[str, tuple[float, V]] = {}

    def get(self, key: str) -> V | None:
        item = self._items.get(key) if self.trusted else None
        if item is None or item[0] < time.monotonic():
            return None
        return item[1]

    def put(self, key: str, value: V, generation: int) -> None:
        """Keep `value`, read from PostgreSQL after `self.generation` was `generation`."""
        if generation != self.generation or not self.trusted:
            return
        if len(self._items) >= self.max_items:
            self._items.clear()
        self._items[key] = (time.monotonic() + self.ttl_s, value)

    def clear(self) -> None:
        self.generation += 1
        self._items.clear()
