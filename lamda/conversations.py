"""Multi-turn conversations by id, with each reply's trace and people's ratings of it, in SQLite
(the embedded default, one node) or PostgreSQL (a cluster: every Chat replica on every node
continues any conversation).

    ConversationStore("runs/serve/conversations.sqlite")
    ConversationStore("postgresql://lamda@db.internal:5432/lamda?sslmode=require")

A turn's user message, reply and the reply's trace (its candidates, research and tool calls) are
appended in one transaction (never one without the other). Ratings (lamda.ratings) refer to a
reply, or one of its candidates, by the conversation and the turn's index.
A database that cannot be reached raises `StoreUnavailable` within `timeout_s`; the service
answers 503 and the client may retry.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
import uuid
from pathlib import Path

from lamda.data import Turn
from lamda.ratings import REPLY, SSI_LEVELS, Rating

SCHEMA = """
CREATE TABLE IF NOT EXISTS turns (
    conversation_id TEXT NOT NULL, idx INTEGER NOT NULL, speaker TEXT NOT NULL, text TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL, PRIMARY KEY (conversation_id, idx));
CREATE TABLE IF NOT EXISTS traces (
    conversation_id TEXT NOT NULL, idx INTEGER NOT NULL, trace TEXT NOT NULL,
    PRIMARY KEY (conversation_id, idx));
CREATE TABLE IF NOT EXISTS ratings (
    id TEXT PRIMARY KEY, conversation_id TEXT NOT NULL, idx INTEGER NOT NULL,
    candidate INTEGER NOT NULL, rater TEXT NOT NULL, key_id TEXT NOT NULL,
    sensible INTEGER NOT NULL, specific INTEGER NOT NULL, interesting INTEGER NOT NULL,
    safe INTEGER NOT NULL, grounded INTEGER, helpful INTEGER, note TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL);
CREATE INDEX IF NOT EXISTS ratings_by_turn ON ratings (conversation_id, idx);
"""
HISTORY = ("SELECT speaker, text FROM turns WHERE conversation_id = {p} "
           "ORDER BY idx DESC LIMIT {p}")
NEXT_INDEX = "SELECT coalesce(max(idx) + 1, 0) FROM turns WHERE conversation_id = {p}"
INSERT = "INSERT INTO turns VALUES ({p}, {p}, {p}, {p}, {p})"
INSERT_TRACE = "INSERT INTO traces VALUES ({p}, {p}, {p})"
TURNS = "SELECT idx, speaker, text FROM turns WHERE conversation_id = {p} ORDER BY idx"
TRACES = "SELECT idx, trace FROM traces WHERE conversation_id = {p}"
TURN = "SELECT speaker, text FROM turns WHERE conversation_id = {p} AND idx = {p}"
TRACE = "SELECT trace FROM traces WHERE conversation_id = {p} AND idx = {p}"
RATING_COLUMNS = ("id, conversation_id, idx, candidate, rater, key_id, sensible, specific, "
                  "interesting, safe, grounded, helpful, note, created")
INSERT_RATING = f"INSERT INTO ratings ({RATING_COLUMNS}) VALUES ({', '.join(['{p}'] * 14)})"
RATINGS = f"SELECT {RATING_COLUMNS} FROM ratings"


class NotFound(LookupError):
    """A rating names a turn or candidate the store does not hold."""


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

    def append(self, conversation_id: str, turns: list[Turn], trace: dict | None = None) -> int:
        """Add `turns` after the conversation's last one, and `trace` as the last one's, all or
        none. Returns the index of the first turn added."""
        now = time.time()

        def write(execute):
            (n,), = execute(NEXT_INDEX, (conversation_id,))
            for i, t in enumerate(turns):
                execute(INSERT, (conversation_id, n + i, t.speaker, t.text, now))
            if trace is not None:
                execute(INSERT_TRACE, (conversation_id, n + len(turns) - 1, json.dumps(trace)))
            return n

        return self.db.transaction(conversation_id, write)

    def conversation(self, conversation_id: str) -> list[dict]:
        """Every turn, oldest first: index, speaker, text, and trace (None where none was kept)."""
        traces = dict(self.db.read(TRACES, (conversation_id,)))
        return [{"index": i, "speaker": s, "text": t,
                 "trace": json.loads(traces[i]) if i in traces else None}
                for i, s, t in self.db.read(TURNS, (conversation_id,))]

    def add_rating(self, r: Rating) -> Rating:
        """Store a rating of a reply, or of one of its candidates; returns it with its id and
        time. NotFound when the conversation has no such LaMDA turn or candidate."""
        rated = dataclasses.replace(r, id=uuid.uuid4().hex, created=time.time())
        votes = r.votes()  # the SSI cascade as three 0/1 columns

        def write(execute):
            response_text(execute, r.conversation_id, r.turn, r.candidate)  # it exists
            execute(INSERT_RATING, (
                rated.id, r.conversation_id, r.turn, r.candidate, r.rater, r.key_id,
                votes["sensible"], votes["specific"], votes["interesting"], int(r.safe),
                None if r.grounded is None else int(r.grounded),
                None if r.helpful is None else int(r.helpful), r.note, rated.created))

        self.db.transaction(r.conversation_id, write)
        return rated

    def ratings(self, conversation_id: str | None = None) -> list[Rating]:
        """The ratings of one conversation, or all of them, oldest first."""
        where = (" WHERE conversation_id = {p}", (conversation_id,)) if conversation_id else ("", ())
        rows = self.db.read(RATINGS + where[0] + " ORDER BY created", where[1])
        return [rating_from_row(row) for row in rows]

    def response(self, conversation_id: str, turn: int, candidate: int = REPLY) -> str:
        """The text of a reply or candidate (NotFound when there is none)."""
        return response_text(lambda sql, args: self.db.read(sql, args), conversation_id, turn,
                             candidate)

    def close(self) -> None:
        self.db.close()


def response_text(execute, conversation_id: str, turn: int, candidate: int) -> str:
    """The text of LaMDA turn `turn`, or of its candidate number `candidate`, through `execute`
    (inside a transaction or not); NotFound when there is none."""
    rows = execute(TURN, (conversation_id, turn))
    if not rows or rows[0][0] != "lamda":
        raise NotFound(f"conversation {conversation_id!r} has no LaMDA turn {turn}")
    trace = execute(TRACE, (conversation_id, turn)) if candidate != REPLY else []
    return rated_text(rows[0][1], json.loads(trace[0][0]) if trace else None, candidate,
                      f"turn {turn} of conversation {conversation_id!r}")


def rated_text(reply: str, trace: dict | None, candidate: int, where: str = "the turn") -> str:
    """The reply, or its candidate number `candidate` from the turn's trace (NotFound if none)."""
    if candidate == REPLY:
        return reply
    candidates = (trace or {}).get("candidates", [])
    if not 0 <= candidate < len(candidates):
        raise NotFound(f"{where} has no candidate {candidate} ({len(candidates)} kept)")
    return candidates[candidate]["text"]


def rating_from_row(row: tuple) -> Rating:
    (id_, cid, idx, candidate, rater, key, sensible, specific, interesting, safe, grounded,
     helpful, note, created) = row
    ssi = SSI_LEVELS[sensible + specific + interesting]  # stored as the cascade allows
    return Rating(cid, idx, candidate, rater, key, ssi, bool(safe),
                  None if grounded is None else bool(grounded),
                  None if helpful is None else bool(helpful), note, id_, created)


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

    def transaction(self, key: str, body):
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                out = body(lambda sql, args: conn.execute(sql.format(p="?"), args).fetchall())
                conn.execute("COMMIT")
                return out
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

    def transaction(self, key: str, body):
        self._ensure_schema()

        def work(cur):
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (key,))

            def execute(sql, args):
                cur.execute(sql.format(p="%s"), args)
                return cur.fetchall() if cur.description else []

            return body(execute)

        return self._run(work)

    def close(self) -> None:
        self.pool.close()
