"""Translator tool: "hello in French", "how do you say cat in German",
"translate 'good morning' to Spanish" -> translations, as a list of strings.

Backends behind one interface (`Backend.translate(text, target) -> list[str]`):
- DictdBackend: FreeDict English-X dictionaries in dictd format (Debian's dict-freedict-eng-fra,
  -eng-deu, -eng-spa, ...), word and short-phrase lookup;
- LibreTranslateBackend: a LibreTranslate-compatible HTTP server, configured by URL.
A query that is not a translation request, or has no translation, gives [].
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Protocol

from lamda.tools.dictd import DictDatabase, find_database

LANGUAGES = {  # name -> (ISO 639-1, FreeDict code)
    "french": ("fr", "fra"), "german": ("de", "deu"), "spanish": ("es", "spa"),
    "italian": ("it", "ita"), "portuguese": ("pt", "por"), "dutch": ("nl", "nld"),
    "swedish": ("sv", "swe"), "russian": ("ru", "rus"), "polish": ("pl", "pol"),
    "turkish": ("tr", "tur"), "japanese": ("ja", "jpn"), "greek": ("el", "ell"),
    "czech": ("cs", "ces"), "finnish": ("fi", "fin"), "irish": ("ga", "gle"),
}
_LANG = "|".join(LANGUAGES)
PATTERNS = [
    re.compile(rf"^\s*translate\s+['\"“]?(?P<text>.+?)['\"”]?\s+(?:to|into)\s+(?P<lang>{_LANG})\b", re.I),
    re.compile(rf"how (?:do|would) (?:you|i|we) say\s+['\"“]?(?P<text>.+?)['\"”]?\s+in\s+(?P<lang>{_LANG})\b", re.I),
    re.compile(rf"what(?:'s| is)\s+['\"“]?(?P<text>.+?)['\"”]?\s+in\s+(?P<lang>{_LANG})\b", re.I),
    re.compile(rf"^\s*['\"“]?(?P<text>.+?)['\"”]?\s+in\s+(?P<lang>{_LANG})\s*[?.!]*\s*$", re.I),
]
MAX_WORDS = 6  # a request for more is a sentence, which a dictionary cannot translate


@dataclass(frozen=True)
class Request:
    text: str  # what to translate (English)
    language: str  # target language name, e.g. "french"


def parse_request(query: str) -> Request | None:
    """The translation request in `query`, or None."""
    if not isinstance(query, str) or len(query) > 500:
        return None
    for pattern in PATTERNS:
        m = pattern.search(query)
        if m:
            text = m.group("text").strip(" '\"“”?.!,")
            if text and len(text.split()) <= MAX_WORDS:
                return Request(text, m.group("lang").lower())
    return None


class Backend(Protocol):
    def translate(self, text: str, language: str) -> list[str]: ...


class DictdBackend:
    """FreeDict dictionaries (freedict-eng-<code>), loaded on first use per language.

    A word has many translations across its entries and senses, in no useful order ("cat" in
    French: mégère, peau de vache, rosse, chat). They are ranked so that the usual one comes first:
    translations whose reverse dictionary (freedict-<code>-eng, where installed) gives the English
    word back, then those of entries with more usage examples (a word's main sense has the most),
    then the dictionary's order.
    """

    def __init__(self, dirs: list[str] | None = None):
        self.dirs = dirs
        self._dbs: dict[str, DictDatabase | None] = {}

    def _db(self, name: str) -> DictDatabase | None:
        if name not in self._dbs:
            path = find_database(name, self.dirs)
            self._dbs[name] = DictDatabase(path) if path else None
        return self._dbs[name]

    def translate(self, text: str, language: str) -> list[str]:
        code = LANGUAGES[language][1]
        db = self._db(f"freedict-eng-{code}")
        if db is None:
            return []
        found: dict[str, int] = {}  # translation -> most usage examples of an entry giving it
        for definition in db.lookup(text):
            headword = definition.split("\n", 1)[0].split(" /")[0].strip().lower()
            if headword != text.lower():  # an entry that only mentions the word (e.g. "CAT")
                continue
            examples = sum(1 for line in definition.splitlines() if line.strip().startswith('"'))
            for t in parse_freedict(definition):
                found[t] = max(found.get(t, 0), examples)
        reverse = self._db(f"freedict-{code}-eng")
        order = list(found)

        def rank(t: str) -> tuple:
            back = text.lower() in {w.lower() for d in (reverse.lookup(t) if reverse else [])
                                    for w in parse_freedict(d)}
            return (not back, -found[t], order.index(t))

        return sorted(found, key=rank)


def parse_freedict(definition: str) -> list[str]:
    """Translations in a FreeDict entry: the senses' comma-separated words, without grammar tags,
    domains, examples, synonyms and cross-references."""
    out = []
    for line in definition.splitlines()[1:]:  # the first line is the headword
        line = line.strip()
        if not line or line.startswith(('"', "Synonym", "see:", "Note:", "Antonym")):
            continue
        line = re.sub(r"^\d+\.\s*", "", line)
        line = re.sub(r"<[^>]*>|\[[^\]]*\]|\([^)]*\)|/[^/]*/", "", line)
        for word in line.split(","):
            word = " ".join(word.split())
            if word and word not in out:
                out.append(word)
    return out


class LibreTranslateBackend:
    """A LibreTranslate-compatible server: POST {url}/translate {q, source, target, format}."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 5.0):
        self.url, self.api_key, self.timeout = url.rstrip("/"), api_key, timeout

    def translate(self, text: str, language: str) -> list[str]:
        body = {"q": text, "source": "en", "target": LANGUAGES[language][0], "format": "text"}
        if self.api_key:
            body["api_key"] = self.api_key
        req = urllib.request.Request(f"{self.url}/translate", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                result = json.loads(resp.read())
        except urllib.error.HTTPError as e:
            if 400 <= e.code < 500:  # the server cannot translate this (language, text)
                return []
            raise
        translated = result.get("translatedText") if isinstance(result, dict) else None
        return [translated] if isinstance(translated, str) and translated.strip() else []


class Translator:
    """The tool: parse the request, ask the backends in order, return the first answer (at most
    `max_results` translations, the usual one first)."""

    def __init__(self, backends: list[Backend] | None = None, max_results: int = 3):
        self.backends = backends if backends is not None else [DictdBackend()]
        self.max_results = max_results

    def __call__(self, query: str) -> list[str]:
        req = parse_request(query)
        if req is None:
            return []
        for backend in self.backends:
            found = backend.translate(req.text, req.language)
            if found:
                return found[:self.max_results]
        return []
