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

import json
from dataclasses import dataclass

from jobs.common import init_ray, load_tokenizer, ray_data_quiet
from jobs.flags import parse


@dataclass(frozen=True, kw_only=True)
class TokenizeJob:
    """The flags of jobs.tokenize."""

    tokenizer: str  # tokenizer.model (local or s3://)
    out: str  # a directory (local or s3://)
    documents: tuple[str, ...] = ()  # document files: JSONL or Parquet, local or s3://
    dialogs: tuple[str, ...] = ()  # dialog files: JSONL or Parquet, local or s3://
    rows_per_file: int = 20_000  # records per Parquet file
    address: str | None = None  # a Ray cluster (default: start one here)
    cpus: float = 2  # CPUs of a Ray started here


def run(job: TokenizeJob) -> dict:
    if not (job.documents or job.dialogs):
        raise SystemExit("give --documents and/or --dialogs")
    tok = load_tokenizer(job.tokenizer)
    init_ray(job.address, job.cpus)
    ray_data_quiet()
    from lamda import ray_data as RD
    meta = RD.tokenize_corpus(tok, {"document": job.documents, "dialog": job.dialogs},
                              job.out, job.rows_per_file)
    print(json.dumps(meta))
    return meta


def main(argv=None) -> dict:
    return run(parse(TokenizeJob, argv, __doc__))


if __name__ == "__main__":
    main()
