import os

import torch

if not torch.cuda.is_available():  # Triton kernels (lamda.attention_band) run in its interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from lamda.data import SAMPLE_DIR, corpus_texts, read_jsonl  # noqa: E402
from lamda.tokenizer import Tokenizer  # noqa: E402


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
