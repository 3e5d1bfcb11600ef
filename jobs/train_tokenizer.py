"""Train the SentencePiece BPE tokenizer on documents and dialogs.

    python -m jobs.train_tokenizer --out runs/local/tokenizer.model [--vocab-size 4096]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lamda.data import SAMPLE_DIR, corpus_texts, read_jsonl
from lamda.tokenizer import Tokenizer


def train_tokenizer(documents: list[Path], dialogs: list[Path], vocab_size: int, out: Path) -> Tokenizer:
    docs = [d for p in documents for d in read_jsonl(p, "document")]
    dlgs = [d for p in dialogs for d in read_jsonl(p, "dialog")]
    tok = Tokenizer.train(corpus_texts(docs, dlgs), vocab_size=vocab_size)
    tok.save(out)
    print(f"tokenizer: {tok.vocab_size} pieces from {len(docs)} documents and {len(dlgs)} dialogs "
          f"-> {out}")
    return tok


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--documents", type=Path, nargs="+", default=[SAMPLE_DIR / "documents.jsonl"],
                   help="JSONL files of documents")
    p.add_argument("--dialogs", type=Path, nargs="+", default=[SAMPLE_DIR / "dialogs.jsonl"],
                   help="JSONL files of dialogs")
    p.add_argument("--vocab-size", type=int, default=4096,
                   help="vocabulary size (paper: 32000; 4096 suits the bundled corpus)")
    p.add_argument("--out", type=Path, required=True, help="where to write tokenizer.model")
    return p


def main(argv=None) -> None:
    a = parser().parse_args(argv)
    train_tokenizer(a.documents, a.dialogs, a.vocab_size, a.out)


if __name__ == "__main__":
    main()
