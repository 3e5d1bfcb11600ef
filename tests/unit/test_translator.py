"""Translation with Debian's FreeDict dictd data (installed by `make test` / .ci/run) and with a
LibreTranslate-compatible HTTP server started by the test on loopback."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from lamda.tools.dictd import find_database
from lamda.tools.translator import (DictdBackend, LibreTranslateBackend, Request, Translator,
                                    parse_freedict, parse_request)

needs_freedict = pytest.mark.skipif(  # installed by `make test`; this guards other set-ups
    find_database("freedict-eng-fra") is None, reason="dict-freedict-eng-fra is not installed")


@pytest.mark.parametrize("query,expected", [
    ("hello in French", Request("hello", "french")),
    ("how do you say cat in German", Request("cat", "german")),
    ("translate 'good morning' to Spanish", Request("good morning", "spanish")),
    ("What is dog in Spanish?", Request("dog", "spanish")),
    ("good morning in French", Request("good morning", "french")),
])
def test_requests_are_recognised(query, expected):
    assert parse_request(query) == expected


@pytest.mark.parametrize("query", ["What is the capital of France?", "I live in France", "hello",
                                   "translate this whole long sentence about many things to French"])
def test_other_queries_are_not_requests(query):
    assert parse_request(query) is None


@needs_freedict
def test_freedict_english_french():
    t = Translator([DictdBackend()])
    assert "bonjour" in t("good morning in French")
    assert "chat" in t("cat in French")
    assert t("hello in French") == ["allô"]  # FreeDict's own entry
    assert t("xyzzyplugh in French") == []


@needs_freedict
def test_freedict_german_ignores_entries_that_only_mention_the_word():
    if find_database("freedict-eng-deu") is None:
        pytest.skip("dict-freedict-eng-deu is not installed")
    assert Translator()("how do you say cat in German") == ["Katze"]


def test_freedict_entry_parsing():
    entry = 'cat /kæt/\n1. mégère, peau de vache, rosse\n2. chat\n   Synonym: {feline}\n "a cat" - un chat'
    assert parse_freedict(entry) == ["mégère", "peau de vache", "rosse", "chat"]


class FakeLibreTranslate(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        words = {("good night", "fr"): "bonne nuit", ("cat", "de"): "Katze"}
        result = words.get((body["q"], body["target"]))
        status, payload = (200, {"translatedText": result}) if result else (400, {"error": "no"})
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def libretranslate():
    server = HTTPServer(("127.0.0.1", 0), FakeLibreTranslate)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_http_backend(libretranslate):
    t = Translator([LibreTranslateBackend(libretranslate)])
    assert t("good night in French") == ["bonne nuit"]
    assert t("how do you say cat in German") == ["Katze"]
    assert t("how do you say dog in German") == []  # the server answers 400


def test_backends_are_tried_in_order(libretranslate):
    class Empty:
        def translate(self, text, language):
            return []

    assert Translator([Empty(), LibreTranslateBackend(libretranslate)])("good night in French") == \
        ["bonne nuit"]
