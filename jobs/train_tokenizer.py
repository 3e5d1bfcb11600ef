"""Train the SentencePiece BPE tokenizer on documents, dialogs and research transcripts.

    python -m jobs.train_tokenizer --out runs/local/tokenizer.model [--vocab-size 4096]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jobs.flags import parse

from lamda.data import SAMPLE_DIR, corpus_texts, read_jsonl
from lamda.tokenizer import Tokenizer
from lamda.tools.retrieval import Retriever


def train_tokenizer(documents: Sequence[Path], dialogs: Sequence[Path], vocab_size: int, out: Path,
                    research: Sequence[Path] = (), index: Path | None = None,
                    max_piece_length: int = 16, spelled: Sequence[str] = ()) -> Tokenizer:
    """A BPE tokenizer on the texts; the URL prefixes of the retrieval `index` become single
    pieces (lamda.tools.retrieval.Retriever.url_prefixes); no piece is a `spelled` word alone."""
    docs = [d for p in documents for d in read_jsonl(p, "document")]
    dlgs = [d for p in dialogs for d in read_jsonl(p, "dialog")]
    res = [r for p in research for r in read_jsonl(p, "research")]
    symbols = Retriever(index).url_prefixes() if index else []
    tok = Tokenizer.train(corpus_texts(docs, dlgs, res), vocab_size=vocab_size, symbols=symbols,
                          max_piece_length=max_piece_length, spelled=spelled)
    tok.save(out)
    print(f"tokenizer: {tok.vocab_size} pieces from {len(docs)} documents, {len(dlgs)} dialogs "
          f"and {len(res)} research transcripts -> {out}")
    return tok


@dataclass(frozen=True, kw_only=True)
class TokenizerJob:
    """The flags of jobs.train_tokenizer."""

    out: Path  # where to write tokenizer.model
    documents: tuple[Path, ...] = field(  # JSONL files of documents
        default=(SAMPLE_DIR / "documents.jsonl",), metadata={"nargs": "+"})
    dialogs: tuple[Path, ...] = field(  # JSONL files of dialogs
        default=(SAMPLE_DIR / "dialogs.jsonl",), metadata={"nargs": "+"})
    research: tuple[Path, ...] = ()  # JSONL files of research transcripts (e.g. jobs.tool_data's
    #                                  research.jsonl)
    index: Path | None = None  # retrieval index whose URL prefixes become single pieces
    vocab_size: int = 4096  # vocabulary size (paper: 32000; 4096 suits the bundled corpus)
    max_piece_length: int = 16  # longest piece in characters (SentencePiece's default: 16)
    spelled: tuple[str, ...] = field(  # words no piece may be alone (e.g. chemical symbols)
        default=(), metadata={"nargs": "*"})


def run(job: TokenizerJob) -> Tokenizer:
    return train_tokenizer(job.documents, job.dialogs, job.vocab_size, job.out, job.research,
                           job.index, job.max_piece_length, job.spelled)


def main(argv=None) -> Tokenizer:
    return run(parse(TokenizerJob, argv, __doc__))


if __name__ == "__main__":
    main()
