"""Multi-turn conversations by id, in SQLite (the embedded default): every replica that can open
the file can continue any conversation."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from pathlib import Path

from lamda.data import Turn

SCHEMA = """
CREATE TABLE IF NOT EXISTS turns (
    conversation_id TEXT NOT NULL, idx INTEGER NOT NULL, speaker TEXT NOT NULL, text TEXT NOT NULL,
    created REAL NOT NULL, PRIMARY KEY (conversation_id, idx));
"""


class ConversationStore:
    def __init__(self, path: str | Path, max_turns: int = 64):
        self.path, self.max_turns = str(path), max_turns  # max_turns: history kept in context
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as c:
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=NORMAL")  # WAL stays consistent; no fsync per turn
            c.executescript(SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = sqlite3.connect(self.path, timeout=10, check_same_thread=False)
        return conn

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    def history(self, conversation_id: str) -> list[Turn]:
        """The last `max_turns` turns, oldest first ([] for an unknown id)."""
        rows = self._conn().execute(
            "SELECT speaker, text FROM turns WHERE conversation_id = ? ORDER BY idx DESC LIMIT ?",
            (conversation_id, self.max_turns)).fetchall()
        return [Turn(s, t) for s, t in reversed(rows)]

    def append(self, conversation_id: str, turns: list[Turn]) -> None:
        with self._conn() as c:
            (n,) = c.execute("SELECT count(*) FROM turns WHERE conversation_id = ?",
                             (conversation_id,)).fetchone()
            c.executemany("INSERT INTO turns VALUES (?, ?, ?, ?, ?)",
                          [(conversation_id, n + i, t.speaker, t.text, time.time())
                           for i, t in enumerate(turns)])
