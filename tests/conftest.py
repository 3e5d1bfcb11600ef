import pytest

from lamda.data import SAMPLE_DIR, corpus_texts, read_jsonl
from lamda.tokenizer import Tokenizer


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
