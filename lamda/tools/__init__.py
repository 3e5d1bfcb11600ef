"""The toolset TS (paper §6.2): one string in, every tool run on it, their lists concatenated in
the order calculator, translator, information retrieval.

    Toolset()("135+7721") == ["7856"]

A tool that raises or runs past its time budget contributes [] and is logged; the toolset never
raises to its caller.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

from lamda.tools.calculator import calculate
from lamda.tools.translator import Translator

log = logging.getLogger(__name__)


@dataclass
class ToolCall:
    tool: str
    results: list[str]
    error: str | None = None  # "timeout" or the exception, when the tool failed


@dataclass
class Toolset:
    """Calculator, translator and (when an index is given) retrieval, each with a time budget."""

    retriever: Callable | None = None  # Retriever(db) or any (query, session) -> list[str]
    translator: Callable[[str], list[str]] = field(default_factory=Translator)
    timeout_s: float = 2.0  # per tool

    def __post_init__(self):
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="tool")

    @classmethod
    def from_env(cls, translate_url: str | None = None) -> "Toolset":
        """Retrieval from LAMDA_INDEX (an SQLite index path) when set; translation from dictd,
        then a LibreTranslate server at `translate_url` (default: LAMDA_TRANSLATE_URL) when set."""
        from lamda.tools.retrieval import Retriever
        from lamda.tools.translator import DictdBackend, LibreTranslateBackend
        backends = [DictdBackend()]
        translate_url = translate_url or os.environ.get("LAMDA_TRANSLATE_URL")
        if translate_url:
            backends.append(LibreTranslateBackend(translate_url,
                                                  os.environ.get("LAMDA_TRANSLATE_KEY")))
        index = os.environ.get("LAMDA_INDEX")
        return cls(retriever=Retriever(index) if index else None, translator=Translator(backends))

    def tools(self) -> list[tuple[str, Callable]]:
        out = [("calculator", calculate), ("translator", self.translator)]
        if self.retriever is not None:
            out.append(("retrieval", self.retriever))
        return out

    def warm_up(self, languages=("French", "German", "Spanish")) -> "Toolset":
        """Load the dictionaries up front (seconds each), so that a first query within the time
        budget does not look like a tool failure."""
        for language in languages:
            self.translator(f"water in {language}")
        return self

    def run(self, query: str, session: str | None = None) -> list[ToolCall]:
        """Every tool on `query`, in order, with what each returned or why it failed."""
        calls = []
        for name, tool in self.tools():
            args = (query, session) if name == "retrieval" else (query,)
            future = self._pool.submit(tool, *args)
            try:
                results = [str(r) for r in (future.result(timeout=self.timeout_s) or [])]
                calls.append(ToolCall(name, results))
            except FutureTimeout:
                log.warning("tool %s timed out after %.1fs on %r", name, self.timeout_s, query[:100])
                calls.append(ToolCall(name, [], "timeout"))
            except Exception as e:  # a broken tool must not break the conversation
                log.warning("tool %s failed on %r: %r", name, query[:100], e)
                calls.append(ToolCall(name, [], repr(e)))
        return calls

    def __call__(self, query: str, session: str | None = None) -> list[str]:
        return [r for call in self.run(query, session) for r in call.results]
