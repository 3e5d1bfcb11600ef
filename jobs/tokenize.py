"""Tokenise a pre-training corpus once (a Ray Data job), for training to stream.

    python -m jobs.tokenize --tokenizer runs/local/tokenizer.model --out runs/local/tokens \\
        --documents data/sample/documents.jsonl --dialogs data/sample/dialogs.jsonl
    python -m jobs.pretrain --run-name pt --tokenizer runs/local/tokenizer.model \\
        --tokens runs/local/tokens --dialog-fraction 0.5

Writes <out>/document/ and <out>/dialog/ (Parquet files of token ids, one record per row, uint16
while the vocabulary fits, in row groups of 1,024 records: the windows each training worker reads,
lamda.token_stream) and <out>/tokens.json (written last: dtype, vocabulary, records and tokens per
source). Local or s3://.
"""

from __future__ import annotations

import argparse
import json

from jobs.common import init_ray, load_tokenizer, ray_data_quiet


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True, help="tokenizer.model (local or s3://)")
    p.add_argument("--documents", nargs="*", default=[], help="JSONL or Parquet, local or s3://")
    p.add_argument("--dialogs", nargs="*", default=[], help="JSONL or Parquet, local or s3://")
    p.add_argument("--out", required=True, help="a directory (local or s3://)")
    p.add_argument("--rows-per-file", type=int, default=20_000, help="records per Parquet file")
    p.add_argument("--address", default=None, help="a Ray cluster (default: start one here)")
    p.add_argument("--cpus", type=float, default=2, help="CPUs of a Ray started here")
    return p


def main(argv=None) -> dict:
    a = parser().parse_args(argv)
    if not (a.documents or a.dialogs):
        raise SystemExit("give --documents and/or --dialogs")
    tok = load_tokenizer(a.tokenizer)
    init_ray(a.address, a.cpus)
    ray_data_quiet()
    from lamda import ray_data as RD
    meta = RD.tokenize_corpus(tok, {"document": a.documents, "dialog": a.dialogs}, a.out,
                             a.rows_per_file)
    print(json.dumps(meta))
    return meta


if __name__ == "__main__":
    main()
