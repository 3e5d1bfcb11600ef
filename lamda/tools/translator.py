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
    """FreeDict dictionaries (freedict-eng-<code>), loaded on first use per language."""

    def __init__(self, dirs: list[str] | None = None):
        self.dirs = dirs
        self._dbs: dict[str, DictDatabase | None] = {}

    def _db(self, language: str) -> DictDatabase | None:
        if language not in self._dbs:
            path = find_database(f"freedict-eng-{LANGUAGES[language][1]}", self.dirs)
            self._dbs[language] = DictDatabase(path) if path else None
        return self._dbs[language]

    def translate(self, text: str, language: str) -> list[str]:
        db = self._db(language)
        if db is None:
            return []
        out: list[str] = []
        for definition in db.lookup(text):
            headword = definition.split("\n", 1)[0].split(" /")[0].strip().lower()
            if headword != text.lower():  # an entry that only mentions the word (e.g. "CAT")
                continue
            for t in parse_freedict(definition):
                if t not in out:
                    out.append(t)
        return out


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
    """The tool: parse the request, ask the backends in order, return the first answer."""

    def __init__(self, backends: list[Backend] | None = None):
        self.backends = backends if backends is not None else [DictdBackend()]

    def __call__(self, query: str) -> list[str]:
        req = parse_request(query)
        if req is None:
            return []
        for backend in self.backends:
            found = backend.translate(req.text, req.language)
            if found:
                return found
        return []
