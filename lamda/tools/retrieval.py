"""Information retrieval tool: an SQLite FTS5 index of documents {id, title, text, url} with BM25
ranking. A query returns the best-matching passage of the best document, as "<snippet> <url>";
within one conversation, repeating a query returns the next-ranked result (paper §6.2).

A document must match enough of the query to count (`min_match` of its words, as search engines'
"minimum should match"), and a query of numbers alone is not a search: so "12 + 30" or
"river in French" (the calculator's and the translator's business) return nothing rather than a
document that happens to share one word.

    python -m lamda.tools.retrieval --db runs/index.sqlite --jsonl data/sample/documents.jsonl \\
        --dictd elements foldoc

Documents come from JSONL (lamda.data's document schema) and from dictd databases (each entry a
document, URL `dict://dict.org/d:<word>:<database>`). The index is one file, so it persists.
User text never becomes SQL or FTS5 syntax: queries are reduced to plain words, each quoted.
"""

from __future__ import annotations

import argparse
import math
import re
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote

from lamda.data import Document, read_jsonl
from lamda.tools.dictd import DictDatabase, find_database
from lamda.tools.sessions import Sessions

STOPWORDS = set("""a an and are as at be by can could did do does for from had has have how i in
is it its me my of on or our please tell that the their them there these they this to was we were
what when where which who whom whose why will with would you your about much many""".split())
MAX_QUERY = 500
MAX_TERMS = 12
SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (rowid INTEGER PRIMARY KEY, id TEXT UNIQUE, title TEXT, text TEXT,
                                 url TEXT);
CREATE VIRTUAL TABLE IF NOT EXISTS docs_fts USING fts5(title, text, content='docs',
                                                       content_rowid='rowid');
"""


def terms(query: str) -> list[str]:
    """The plain words of a query (lower-case, no stopwords), the only thing that reaches FTS5."""
    words = re.findall(r"[^\W_]+", query[:MAX_QUERY].lower())
    out = []
    for w in words:
        if w not in STOPWORDS and w not in out:
            out.append(w)
    return out[:MAX_TERMS]


def fts_query(words: list[str]) -> str:
    """Any of the words, each a quoted FTS5 string (quotes cannot occur inside: words are \\w+)."""
    return " OR ".join(f'"{w}"' for w in words)


def matched(words: list[str], text: str) -> int:
    """How many of the query's words `text` contains (as FTS5 matches them: whole tokens)."""
    have = set(re.findall(r"[^\W_]+", text.lower()))
    return sum(w in have for w in words)


def best_passage(text: str, words: list[str], max_chars: int = 300) -> str:
    """The sentence or line of `text` that contains the most query words."""
    parts = [p.strip() for p in re.split(r"(?<=[.!?])\s+|\n+", text) if p.strip()]
    if not parts:
        return ""

    def score(p: str) -> int:
        low = p.lower()
        return sum(1 for w in words if re.search(rf"\b{re.escape(w)}", low))

    best = max(parts, key=score)  # the first of equally good ones
    return best[:max_chars]


class Retriever:
    """The tool. `search(query, session)` remembers per session how far each query has got."""

    def __init__(self, db_path: str | Path, min_match: float = 2 / 3, max_sessions: int = 10_000,
                 session_ttl_s: float = 3600.0):
        self.db_path = str(db_path)
        self.min_match = min_match  # share of the query's words a document must contain
        self._local = threading.local()
        # per conversation: how many results of each query (its sorted words) were returned
        self.sessions: Sessions[dict[tuple[str, ...], int]] = Sessions(dict, max_sessions,
                                                                       session_ttl_s)
        with self._conn() as c:
            c.executescript(SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = sqlite3.connect(self.db_path, check_same_thread=False)
        return conn

    def add(self, docs: Iterable[Document]) -> int:
        """Index documents (an id already present is replaced); returns how many were added."""
        n = 0
        with self._conn() as c:
            for d in docs:
                old = c.execute("SELECT rowid, title, text FROM docs WHERE id = ?", (d.id,)).fetchone()
                if old:
                    c.execute("INSERT INTO docs_fts(docs_fts, rowid, title, text) "
                              "VALUES ('delete', ?, ?, ?)", old)
                    c.execute("DELETE FROM docs WHERE rowid = ?", (old[0],))
                cur = c.execute("INSERT INTO docs (id, title, text, url) VALUES (?, ?, ?, ?)",
                                (d.id, d.title, d.text, d.url))
                c.execute("INSERT INTO docs_fts (rowid, title, text) VALUES (?, ?, ?)",
                          (cur.lastrowid, d.title, d.text))
                n += 1
        return n

    def count(self) -> int:
        return self._conn().execute("SELECT count(*) FROM docs").fetchone()[0]

    def url_prefixes(self, min_count: int = 10) -> list[str]:
        """The URL prefixes shared by at least `min_count` documents (up to the last "/" or
        ":"): "dict://dict.org/d:" for dictionary entries, one per collection of documents. The
        tokenizer makes them single pieces, so citing a source means copying its name after one."""
        counts: dict[str, int] = defaultdict(int)
        for (url,) in self._conn().execute("SELECT url FROM docs"):
            m = re.match(r"dict://[^/]+/d:|.*/", url)
            if m:
                counts[m.group()] += 1
        return sorted(p for p, n in counts.items() if n >= min_count)

    def ranked(self, query: str, limit: int = 10) -> list[tuple[str, str, str, str]]:
        """(id, title, text, url) of the best documents among those holding at least `min_match`
        of the query's words: those the query names by their whole title first, then BM25 (title
        weighted 2x)."""
        words = terms(query)
        if not any(not w.isdigit() for w in words):
            return []
        need = math.ceil(self.min_match * len(words))
        rows = self._conn().execute(
            "SELECT d.id, d.title, d.text, d.url FROM docs_fts JOIN docs d ON d.rowid = docs_fts.rowid "
            "WHERE docs_fts MATCH ? ORDER BY bm25(docs_fts, 2.0, 1.0) LIMIT ?",
            (fts_query(words), 10 * limit)).fetchall()
        rows = [r for r in rows if matched(words, f"{r[1]} {r[2]}") >= need]
        named = set(words)
        rows.sort(key=lambda r: not set(terms(r[1])) <= named)  # stable: BM25 order otherwise
        return rows[:limit]

    def search(self, query: str, session: str | None = None) -> list[str]:
        """["<snippet> <url>"] of the next result for this query in this session ([] when none)."""
        words = terms(query)
        key = tuple(sorted(words))
        rank = 0 if session is None else self.sessions.update(session, lambda seen: _next(seen, key))
        rows = self.ranked(query, limit=rank + 1)
        if len(rows) <= rank:
            return []
        _, title, text, url = rows[rank]
        # the title names the whole document: its words do not single out a passage
        passage = best_passage(text, [w for w in words if w not in terms(title)])
        if title.lower() not in passage.lower():
            passage = f"{title}: {passage}"
        return [f"{passage} {url}"]

    def forget(self, session: str) -> None:
        self.sessions.forget(session)

    def __call__(self, query: str, session: str | None = None) -> list[str]:
        return self.search(query, session)


def _next(seen: dict[tuple[str, ...], int], key: tuple[str, ...]) -> int:
    """The rank of the result to return for query `key`, counting it as returned."""
    rank = seen.get(key, 0)
    seen[key] = rank + 1
    return rank


FIELD = re.compile(r"^[A-Z][\w ]{0,30}:\s*\S")  # a "Symbol: Na" line of a dictionary entry


def entry_text(body: str) -> str:
    """A dictd entry's body as document text: "Field: value" lines stay lines of their own (so
    the best passage of "atomic number of carbon" is "Atomic number: 6"), the prose between them
    is joined back into sentences."""
    lines, prose = [], []
    for line in body.splitlines():
        if FIELD.match(line.strip()):
            if prose:
                lines.append(" ".join(prose))
                prose = []
            lines.append(" ".join(line.split()))
        elif line.strip():
            prose.append(" ".join(line.split()))
    return "\n".join(lines + ([" ".join(prose)] if prose else []))


def dictd_documents(db: DictDatabase) -> Iterable[Document]:
    """Every entry of a dictd database as a document with a stable DICT-protocol URL."""
    for word, definition in db.entries():
        body = definition.split("\n", 1)[1] if "\n" in definition else definition
        if body.strip():
            yield Document(id=f"{db.name}:{word}", title=word, text=entry_text(body),
                           url=f"dict://dict.org/d:{quote(word)}:{db.name}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Build or extend a retrieval index.")
    p.add_argument("--db", required=True, help="SQLite index file (created if missing)")
    p.add_argument("--jsonl", nargs="*", default=[], help="JSONL document files")
    p.add_argument("--dictd", nargs="*", default=[],
                   help="dictd databases by name (e.g. elements foldoc) or .index path")
    a = p.parse_args(argv)
    build_index(a.db, a.jsonl, a.dictd)


def build_index(db, jsonl=(), dictd=()) -> None:
    """Add JSONL document files and dictd databases (by name or .index path) to the index `db`."""
    Path(db).parent.mkdir(parents=True, exist_ok=True)
    r = Retriever(db)
    for path in jsonl:
        print(f"{path}: {r.add(read_jsonl(path, 'document'))} documents")
    for name in dictd:
        index = Path(name) if str(name).endswith(".index") else find_database(name)
        if index is None:
            raise SystemExit(f"dictd database {name!r} not found (install dict-{name}?)")
        print(f"{index}: {r.add(dictd_documents(DictDatabase(index)))} entries")
    print(f"{db}: {r.count()} documents")


if __name__ == "__main__":
    main()
