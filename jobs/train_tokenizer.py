"""Train the SentencePiece BPE tokenizer on documents, dialogs and research transcripts.

    python -m jobs.train_tokenizer --out runs/local/tokenizer.model [--vocab-size 4096]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jobs.flags import parse

from lamda.data import SAMPLE_DIR, corpus_texts, read_jsonl
from lamda.tokenizer import Tokenizer
from lamda.tools.retrieval import Retriever


def train_tokenizer(documents: list[Path], dialogs: list[Path], vocab_size: int, out: Path,
                    research: list[Path] = (), index: Path | None = None) -> Tokenizer:
    """A BPE tokenizer on the texts; the URL prefixes of the retrieval `index` become single
    pieces (lamda.tools.retrieval.Retriever.url_prefixes)."""
    docs = [d for p in documents for d in read_jsonl(p, "document")]
    dlgs = [d for p in dialogs for d in read_jsonl(p, "dialog")]
    res = [r for p in research for r in read_jsonl(p, "research")]
    symbols = Retriever(index).url_prefixes() if index else []
    tok = Tokenizer.train(corpus_texts(docs, dlgs, res), vocab_size=vocab_size, symbols=symbols)
    tok.save(out)
    print(f"tokenizer: {tok.vocab_size} pieces from {len(docs)} documents, {len(dlgs)} dialogs "
          f"and {len(res)} research transcripts -> {out}")
    return tok


@dataclass(frozen=True, kw_only=True)
class TokenizerJob:
    """The flags of jobs.train_tokenizer."""

    out: Path  # where to write tokenizer.model
    documents: tuple[Path, ...] = (SAMPLE_DIR / "documents.jsonl",)  # JSONL files of documents
    dialogs: tuple[Path, ...] = (SAMPLE_DIR / "dialogs.jsonl",)  # JSONL files of dialogs
    research: tuple[Path, ...] = ()  # JSONL files of research transcripts (e.g. jobs.tool_data's
    #                                  research.jsonl)
    index: Path | None = None  # retrieval index whose URL prefixes become single pieces
    vocab_size: int = 4096  # vocabulary size (paper: 32000; 4096 suits the bundled corpus)


def main(argv=None) -> None:
    job = parse(TokenizerJob, argv, __doc__)
    train_tokenizer(list(job.documents), list(job.dialogs), job.vocab_size, job.out,
                    list(job.research), job.index)


if __name__ == "__main__":
    main()
