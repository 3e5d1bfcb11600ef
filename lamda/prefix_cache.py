"""Prefix reuse: the KV cache of recent prompts, so a prompt that begins like one of them is
prefilled only from where they differ.

A conversation's prompts within a turn share its context: the response prompt is
`<context> RESPONSE`, each research step's is `<context> LAMDA-BASE: draft ...` and extends the
step before it, and the next turn's context begins with this one's. Keys and values of a token
depend on the tokens before it and their distances (T5's relative bias), not on absolute
positions, so a stored row can be placed at any column of the engine's cache.

Entries are one row each (no padding), kept least-recently-used first within a token budget; an
entry is found by the first `min_len` tokens it shares with a prompt, then the longest common
prefix among those.
"""

from __future__ import annotations

import os
from collections import OrderedDict

from lamda.model import KVCache


class PrefixCache:
    def __init__(self, max_tokens: int, min_len: int = 8):
        self.max_tokens = max_tokens  # positions held by all entries together
        self.min_len = min_len  # the shortest shared prefix worth reusing
        self._entries: OrderedDict[tuple[int, ...], KVCache] = OrderedDict()  # least recent first
        self._by_head: dict[tuple[int, ...], set[tuple[int, ...]]] = {}  # first min_len tokens -> keys
        self.tokens = 0  # positions held now

    def __len__(self) -> int:
        return len(self._entries)

    def match(self, prompt: list[int]) -> tuple[int, KVCache | None]:
        """The longest prefix of `prompt` held (at most all but its last token, whose logits the
        caller needs), as (length, one-row cache of that many columns), or (0, None)."""
        if len(prompt) <= self.min_len:
            return 0, None
        best, key, whole = 0, None, tuple(prompt)
        for k in self._by_head.get(whole[:self.min_len], ()):
            n = len(os.path.commonprefix([k, whole]))
            if n > best:
                best, key = n, k
        best = min(best, len(prompt) - 1)
        if key is None or best < self.min_len:
            return 0, None
        self._entries.move_to_end(key)
        return best, _columns(self._entries[key], 0, best)

    def put(self, prompt: list[int], row: KVCache) -> None:
        """Hold `row` (one row, len(prompt) columns, all valid) as `prompt`'s cache."""
        key = tuple(prompt)
        if len(key) < self.min_len or len(key) > self.max_tokens:
            return
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        self._entries[key] = row
        self._by_head.setdefault(key[:self.min_len], set()).add(key)
        self.tokens += len(key)
        while self.tokens > self.max_tokens:
            old, _ = self._entries.popitem(last=False)
            self._by_head[old[:self.min_len]].discard(old)
            if not self._by_head[old[:self.min_len]]:
                del self._by_head[old[:self.min_len]]
            self.tokens -= len(old)


def _columns(cache: KVCache, start: int, stop: int) -> KVCache:
    """Columns start..stop-1 of every row (views)."""
    return cache.map(lambda t, d: t.narrow(d, start, stop - start))


def row_columns(cache: KVCache, row: int, start: int) -> KVCache:
    """Row `row` from column `start` on, copied (a prompt's part of a left-padded prefill)."""
    return cache.map(lambda t, d: t[row:row + 1].narrow(d, start, t.shape[d] - start).clone())
