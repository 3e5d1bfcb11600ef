"""Multi-turn conversations by id, in SQLite (the embedded default, one node) or PostgreSQL (a
cluster: every Chat replica on every node continues any conversation).

    ConversationStore("runs/serve/conversations.sqlite")
    ConversationStore("postgresql://lamda@db.internal:5432/lamda?sslmode=require")

A turn's user message and reply are appended in one transaction (never one without the other).
A database that cannot be reached raises `StoreUnavailable` within `timeout_s`; the service
answers 503 and the client may retry.
"""

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
    created DOUBLE PRECISION NOT NULL, PRIMARY KEY (conversation_id, idx));
"""
HISTORY = ("SELECT speaker, text FROM turns WHERE conversation_id = {p} "
           "ORDER BY idx DESC LIMIT {p}")
NEXT_INDEX = "SELECT coalesce(max(idx) + 1, 0) FROM turns WHERE conversation_id = {p}"
INSERT = "INSERT INTO turns VALUES ({p}, {p}, {p}, {p}, {p})"


class StoreUnavailable(Exception):
    """The conversation database cannot be reached or answered with an error; nothing was written."""


def is_postgres(url: str) -> bool:
    return str(url).startswith(("postgresql://", "postgres://"))


class ConversationStore:
    def __init__(self, url: str | Path, max_turns: int = 64, timeout_s: float = 5.0,
                 pool_size: int = 4):
        self.url = str(url)
        self.max_turns = max_turns  # history kept in context
        # timeout_s: to connect, and for each statement; pool_size: PostgreSQL connections
        self.db = (_Postgres(self.url, timeout_s, pool_size) if is_postgres(self.url)
                   else _Sqlite(self.url, timeout_s))

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    def history(self, conversation_id: str) -> list[Turn]:
        """The last `max_turns` turns, oldest first ([] for an unknown id)."""
        rows = self.db.read(HISTORY, (conversation_id, self.max_turns))
        return [Turn(s, t) for s, t in reversed(rows)]

    def append(self, conversation_id: str, turns: list[Turn]) -> None:
        """Add `turns` after the conversation's last one, all or none."""
        now = time.time()

        def write(execute):
            (n,), = execute(NEXT_INDEX, (conversation_id,))
            for i, t in enumerate(turns):
                execute(INSERT, (conversation_id, n + i, t.speaker, t.text, now))

        self.db.transaction(conversation_id, write)

    def close(self) -> None:
        self.db.close()


class _Sqlite:
    """One connection per thread; writers take the database lock when their transaction starts
    (BEGIN IMMEDIATE), so two appends to one conversation never pick the same index."""

    def __init__(self, path: str, timeout_s: float):
        self.path, self.timeout_s = path, timeout_s
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        conn = self._conn()
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA.replace("DOUBLE PRECISION", "REAL"))

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL stays consistent; no fsync per turn
            self._local.conn = conn
        return conn

    def read(self, sql: str, args: tuple) -> list[tuple]:
        try:
            return self._conn().execute(sql.format(p="?"), args).fetchall()
        except sqlite3.Error as e:
            raise StoreUnavailable(f"conversation store {self.path}: {e}") from e

    def transaction(self, key: str, body) -> None:
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                body(lambda sql, args: conn.execute(sql.format(p="?"), args).fetchall())
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise StoreUnavailable(f"conversation store {self.path}: {e}") from e

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class _Postgres:
    """A psycopg 3 connection pool. The schema is created on start, or on first use when the
    database was down then; connections are checked before use, so a restarted server is
    reconnected to. A transaction holds an advisory lock on its conversation, so concurrent
    appends to one conversation line up instead of colliding on an index."""

    def __init__(self, url: str, timeout_s: float, pool_size: int):
        from psycopg_pool import ConnectionPool
        self.where = url.rsplit("@", 1)[-1].split("?")[0]  # host:port/db, never the password
        self.pool = ConnectionPool(
            url, min_size=1, max_size=pool_size, timeout=timeout_s, open=False,
            check=ConnectionPool.check_connection, name="lamda-conversations",
            kwargs={"connect_timeout": max(1, int(timeout_s)),
                    "options": f"-c statement_timeout={int(timeout_s * 1000)}"})
        self.pool.open(wait=False)
        self._schema = False
        try:
            self._ensure_schema()
        except StoreUnavailable:
            pass  # down now: retried on first use

    def _ensure_schema(self) -> None:
        if not self._schema:
            self._run(lambda cur: cur.execute(SCHEMA))
            self._schema = True

    def _run(self, work):
        import psycopg
        from psycopg_pool import PoolTimeout
        try:
            with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                return work(cur)
        except (psycopg.Error, PoolTimeout) as e:
            raise StoreUnavailable(f"conversation store at {self.where}: "
                                   f"{type(e).__name__}: {str(e).strip()[:200]}") from e

    def read(self, sql: str, args: tuple) -> list[tuple]:
        self._ensure_schema()

        def work(cur):
            cur.execute(sql.format(p="%s"), args)
            return cur.fetchall()

        return self._run(work)

    def transaction(self, key: str, body) -> None:
        self._ensure_schema()

        def work(cur):
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (key,))

            def execute(sql, args):
                cur.execute(sql.format(p="%s"), args)
                return cur.fetchall() if cur.description else []

            body(execute)

        self._run(work)

    def close(self) -> None:
        self.pool.close()
