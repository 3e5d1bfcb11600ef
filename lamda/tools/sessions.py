"""Per-conversation tool state with bounds: at most `max_sessions` conversations, each dropped
`ttl_s` after its last use, the least recently used first when full. A service that opens a
session per request (an OpenAI client that sends no `user`) then holds bounded memory."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")


class Sessions(Generic[V]):
    def __init__(self, new: Callable[[], V], max_sessions: int = 10_000, ttl_s: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic):
        self.new = new  # the state of a conversation not seen (or forgotten)
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s  # idle time after which a conversation's state is dropped
        self.clock = clock
        self._items: OrderedDict[str, tuple[float, V]] = OrderedDict()  # oldest use first
        self._lock = threading.Lock()

    def update(self, key: str, change: Callable[[V], object]):
        """`change(state)` on the conversation's state (made when missing), under the lock;
        returns what `change` returned."""
        with self._lock:
            now = self.clock()
            self._expire(now)
            _, state = self._items.pop(key, (now, None))
            if state is None:
                state = self.new()
            self._items[key] = (now, state)
            while len(self._items) > self.max_sessions:
                self._items.popitem(last=False)
            return change(state)

    def forget(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            self._expire(self.clock())
            return len(self._items)

    def _expire(self, now: float) -> None:
        while self._items:
            key, (used, _) = next(iter(self._items.items()))
            if now - used < self.ttl_s:
                break
            del self._items[key]
