"""Retrieval over an SQLite FTS5 index of Debian's dict-elements and the bundled corpus."""

import sqlite3

import pytest

from lamda.data import SAMPLE_DIR, Document, read_jsonl
from lamda.tools.dictd import DictDatabase, find_database
from lamda.tools.retrieval import Retriever, dictd_documents, main, terms

needs_elements = pytest.mark.skipif(find_database("elements") is None,
                                    reason="dict-elements is not installed")


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    path = tmp_path_factory.mktemp("index") / "index.sqlite"
    r = Retriever(path)
    r.add(read_jsonl(SAMPLE_DIR / "documents.jsonl", "document"))
    if find_database("elements"):
        r.add(dictd_documents(DictDatabase(find_database("elements"))))
    return r


@needs_elements
def test_ingest_command_builds_a_persistent_index(tmp_path, capsys):
    db = tmp_path / "idx.sqlite"
    main(["--db", str(db), "--jsonl", str(SAMPLE_DIR / "documents.jsonl"), "--dictd", "elements"])
    assert "documents" in capsys.readouterr().out
    assert Retriever(db).count() == 208 + 137  # a new process sees the same index


@needs_elements
def test_atomic_number_of_carbon(index):
    seen = []
    for _ in range(3):
        (result,) = index.search("atomic number of carbon", session="conv-1")
        seen.append(result)
    assert "Atomic number: 6 " in seen[0] and seen[0].endswith("dict://dict.org/d:carbon:elements")
    # repeating the query advances to the next-ranked document
    assert len({r.split()[-1] for r in seen}) == 3
    # another conversation starts from the top again
    assert index.search("atomic number of carbon", session="conv-2") == [seen[0]]


def test_everest_answer_cites_its_document(index):
    (result,) = index.search("How tall is Mount Everest?")
    assert "8,849 metres" in result and result.endswith("https://example.org/kb/mountains/mount-everest")


@pytest.mark.parametrize("query", [
    "'; DROP TABLE docs; --", '" OR 1=1 --', "NEAR(carbon oxygen)", "title:* AND text:*",
    "carbon*", "^carbon", "\"unterminated", "(((", "docs_fts MATCH 'x'", "\x00\x01", "ü" * 10_000,
])
def test_query_syntax_is_harmless(index, query):
    before = index.count()
    index.search(query)  # no exception, whatever it finds
    assert index.count() == before
    assert all('"' not in t and "*" not in t for t in terms(query))


def test_no_terms_no_results(index):
    assert index.search("the of and") == [] and index.search("") == []


def test_a_result_must_match_enough_of_the_query(index):
    """Minimum should match: arithmetic and translation requests (the other tools' business)
    find no document that merely shares one of their words."""
    assert index.search("12 + 30") == [] and index.search("river in French") == []
    assert index.search("capital of France") == [
        "The capital of France is Paris. https://example.org/kb/countries/france"]
    assert Retriever(index.db_path, min_match=0.0).search("river in French")  # any word would do


def test_readding_a_document_replaces_it(tmp_path):
    r = Retriever(tmp_path / "i.sqlite")
    r.add([Document("d1", "Zebra", "Zebras have stripes.", "https://example.org/z")])
    r.add([Document("d1", "Zebra", "Zebras are African equids.", "https://example.org/z")])
    assert r.count() == 1
    assert r.search("zebra equids") == ["Zebras are African equids. https://example.org/z"]
    with sqlite3.connect(tmp_path / "i.sqlite") as c:  # the FTS index agrees with the table
        assert c.execute("SELECT count(*) FROM docs_fts WHERE docs_fts MATCH 'stripes'").fetchone()[0] == 0


def test_a_document_the_query_names_by_title_comes_first(tmp_path):
    """"chemical symbol of hafnium" is the hafnium entry, not another element's entry that
    mentions hafnium alongside the word "chemical"."""
    r = Retriever(tmp_path / "i.sqlite")
    r.add([Document("e:unnilquadium", "unnilquadium", "Chemical properties similar to hafnium.",
                    "dict://dict.org/d:unnilquadium:elements"),
           Document("e:hafnium", "hafnium", "Symbol: Hf", "dict://dict.org/d:hafnium:elements")])
    assert r.search("chemical symbol of hafnium") == ["hafnium: Symbol: Hf dict://dict.org/d:hafnium:elements"]
