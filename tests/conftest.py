import os
import sys

import torch

if not torch.cuda.is_available():  # Triton kernels (lamda.attention.band) run in its interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from lamda.data import SAMPLE_DIR, corpus_texts, read_jsonl  # noqa: E402
from lamda.tokenizer import Tokenizer  # noqa: E402

_exit_status: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _exit_status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the process with pytest's exit status once every result is reported, skipping the
    interpreter's teardown. That teardown runs the static destructors of the native libraries the
    suite loads (torch, Ray's core worker, Triton's interpreter) in no fixed order, and once crashed
    (SIGSEGV) in CI after the summary of a passing run, after pytest's faulthandler had stopped."""
    if _exit_status:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[-1])


@pytest.fixture(scope="session")
def sample_docs():
    return read_jsonl(SAMPLE_DIR / "documents.jsonl", "document")


@pytest.fixture(scope="session")
def sample_dialogs():
    return read_jsonl(SAMPLE_DIR / "dialogs.jsonl", "dialog")


@pytest.fixture(scope="session")
def tok(sample_docs, sample_dialogs):
    """A tokenizer trained on the bundled corpus, sized for the `debug` preset."""
    return Tokenizer.train(corpus_texts(sample_docs, sample_dialogs), vocab_size=1024)


@pytest.fixture(scope="session")
def tool_index(tmp_path_factory, sample_docs):
    """A retrieval index of the bundled documents and Debian's dict-elements (installed by make)."""
    from lamda.tools.dictd import DictDatabase, find_database
    from lamda.tools.retrieval import Retriever, dictd_documents
    path = tmp_path_factory.mktemp("index") / "index.sqlite"
    r = Retriever(path)
    r.add(sample_docs)
    r.add(dictd_documents(DictDatabase(find_database("elements"))))
    return path


@pytest.fixture(scope="session")
def tool_sources():
    from lamda import tool_data as TD
    return TD.Sources.load(SAMPLE_DIR / "doc_questions.jsonl")


@pytest.fixture(scope="session")
def research_records(tool_sources, tool_index):
    """A small training split of tool-use transcripts from the real tools (lamda.tool_data)."""
    from lamda import tool_data as TD
    from lamda.data import parse_research
    from lamda.tools import Toolset
    from lamda.tools.retrieval import Retriever
    toolset = Toolset(retriever=Retriever(tool_index), timeout_s=120)
    recs = TD.build(tool_sources, toolset, "train", n_arithmetic=200, per_element=1, per_word=1,
                    chat_repeats=1, max_words=300)
    return [parse_research(r) for r in recs]


@pytest.fixture(scope="module")
def postgres():
    """A real PostgreSQL server on loopback (tests.postgres), one per test module."""
    import socket

    from tests.postgres import PostgresServer
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = PostgresServer(port)
    server.start()
    try:
        yield server
    finally:
        server.remove()
