"""Train the SentencePiece BPE tokenizer on documents, dialogs and research transcripts.

    python -m jobs.train_tokenizer --out runs/local/tokenizer.model [--vocab-size 4096]
"""

from __future__ import annotations

import argparse
from pathlib import Path

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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--documents", type=Path, nargs="+", default=[SAMPLE_DIR / "documents.jsonl"],
                   help="JSONL files of documents")
    p.add_argument("--dialogs", type=Path, nargs="+", default=[SAMPLE_DIR / "dialogs.jsonl"],
                   help="JSONL files of dialogs")
    p.add_argument("--research", type=Path, nargs="*", default=[],
                   help="JSONL files of research transcripts (e.g. jobs.tool_data's research.jsonl)")
    p.add_argument("--index", type=Path, default=None,
                   help="retrieval index whose URL prefixes become single pieces")
    p.add_argument("--vocab-size", type=int, default=4096,
                   help="vocabulary size (paper: 32000; 4096 suits the bundled corpus)")
    p.add_argument("--out", type=Path, required=True, help="where to write tokenizer.model")
    return p


def main(argv=None) -> None:
    a = parser().parse_args(argv)
    train_tokenizer(a.documents, a.dialogs, a.vocab_size, a.out, a.research, a.index)


if __name__ == "__main__":
    main()
