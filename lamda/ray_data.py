"""Ray Data input pipelines: records from JSONL or Parquet (local or s3://), the pre-training and
fine-tuning datasets (tokenised, packed, mixed, shuffled), the one-off tokenisation of a large
corpus (jobs.tokenize), and the evaluation split. With lamda.ray_train, the one module of `lamda`
that imports Ray."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.fs
import ray
import ray.data

from lamda import data as D
from lamda import token_stream as TS
from lamda.storage import filesystem, join, upload_dir
from lamda.tokenizer import Tokenizer


def _read(path: str) -> ray.data.Dataset:
    """Rows {"record": JSON string, "source": path} from JSONL or Parquet, local or s3://."""
    fs, fs_path = filesystem(path)
    if _is_parquet(fs, fs_path):
        ds = ray.data.read_parquet(fs_path, filesystem=fs)
        return ds.map_batches(lambda df: {"record": np.array([json.dumps(_plain(r)) for r in
                                                              df.to_dict("records")], dtype=object),
                                          "source": np.array([path] * len(df), dtype=object)},
                              batch_format="pandas")
    ds = ray.data.read_text(fs_path, filesystem=fs, include_paths=True, drop_empty_lines=True)
    return ds.map_batches(lambda b: {"record": b["text"], "source": b["path"]}, batch_format="numpy")


def _is_parquet(fs: pyarrow.fs.FileSystem, path: str) -> bool:
    """A .parquet file, or a directory holding .parquet files (else: JSONL)."""
    if path.endswith(".parquet"):
        return True
    info = fs.get_file_info(path)
    if info.type != pyarrow.fs.FileType.Directory:
        return False
    files = fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=True))
    return any(f.path.endswith(".parquet") for f in files)


def _plain(obj):
    """numpy values from Parquet -> JSON-able Python values."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_plain(v) for v in obj]
    return obj.item() if isinstance(obj, np.generic) else obj


def read_records(paths: Sequence[str]) -> ray.data.Dataset | None:
    """Rows {"record", "source"} of every file (or directory) in `paths`; None when empty."""
    if not paths:
        return None
    dss = [_read(str(p)) for p in paths]
    return dss[0].union(*dss[1:]) if len(dss) > 1 else dss[0]


def pretraining_dataset(tok: Tokenizer, documents: Sequence[str], dialogs: Sequence[str],
                        seq_len: int, dialog_fraction: float, seed: int = 0) -> ray.data.Dataset:
    """Rows {"tokens": (seq_len + 1,) int64}: documents and dialogs tokenised in map_batches,
    packed per source, then mixed so that `dialog_fraction` of the rows are dialog rows."""

    def packed(paths, kind, to_ids):
        ds = read_records(paths)
        if ds is None:
            return None

        def tokenize_and_pack(batch):
            recs = D.parse_json_records(batch["record"], kind, batch["source"])
            return {"tokens": D.pack_array((to_ids(tok, r) for r in recs), seq_len)}

        return ds.map_batches(tokenize_and_pack, batch_size=512, batch_format="numpy").materialize()

    sources = [packed(documents, "document", D.document_ids), packed(dialogs, "dialog", D.dialog_ids)]
    counts = [ds.count() if ds is not None else 0 for ds in sources]
    if not any(counts):
        raise ValueError("no pre-training data: give documents and/or dialogs (enough for one row)")
    keep = D.mixture_rows(*counts, dialog_fraction)
    parts = [ds if k == n else ds.limit(k) for ds, n, k in zip(sources, counts, keep) if k > 0]
    mixed = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    return mixed.random_shuffle(seed=seed)


def finetune_dataset(tok: Tokenizer, seq_len: int, labelled: Sequence[str] = (),
                     research: Sequence[str] = (), dialogs: Sequence[str] = (),
                     seed: int = 0) -> tuple[ray.data.Dataset, dict[str, int]]:
    """Rows {"tokens", "mask", "segments"}: generative, discriminative and research-format examples
    mixed, packed several to a row (lamda.data.pack_examples), shuffled; and the count of the
    examples, {"examples": n, "left_out": k}, k of them longer than a row and left out."""
    parts = []
    for paths, kind in ((labelled, "labelled"), (research, "research"), (dialogs, "dialog")):
        ds = read_records(paths)
        if ds is None:
            continue

        def to_examples(batch, kind=kind):
            recs = D.parse_json_records(batch["record"], kind, batch["source"])
            exs = [ex for r in recs for ex in D.finetune_examples(tok, r, kind)]
            tokens, mask, segments = D.pack_examples(exs, seq_len, tok.pad_id)
            counts = np.zeros((2, len(tokens)), dtype=np.int64)  # the batch's, on its first row
            if len(tokens):  # a row's largest segment number: the examples packed into it
                counts[:, 0] = len(exs), len(exs) - int(segments.max(axis=1).sum())
            return {"tokens": tokens, "mask": mask, "segments": segments,
                    "examples": counts[0], "left_out": counts[1]}

        parts.append(ds.map_batches(to_examples, batch_size=256, batch_format="numpy"))
    if not parts:
        raise ValueError("no fine-tuning data: give labelled, research and/or dialog files")
    ds = (parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]).materialize()
    counts = ds.sum(["examples", "left_out"]) if ds.count() else {}
    counts = {k: int(counts.get(f"sum({k})") or 0) for k in ("examples", "left_out")}
    return ds.drop_columns(["examples", "left_out"]).random_shuffle(seed=seed), counts


# -- a tokenised corpus (jobs.tokenize): tokenised once, then read by each rank (token_stream) ------

TOKENIZERS = {"document": D.document_ids, "dialog": D.dialog_ids}


def tokenize_corpus(tok: Tokenizer, sources: dict[str, Sequence[str]], out: str,
                    rows_per_file: int = 20_000) -> dict:
    """Tokenise each source ("document", "dialog": JSONL or Parquet, local or s3://) once into
    Parquet files of token ids, one record per row (uint16 while the vocabulary fits, else
    uint32) in row groups of token_stream.WINDOW_RECORDS records (the unit the training ranks
    read), under out/<source>/; then write out/tokens.json with the counts. Returns that."""
    import pyarrow as pa
    dtype = pa.uint16() if tok.vocab_size <= 1 << 16 else pa.uint32()
    meta = {"dtype": str(dtype), "vocab_size": tok.vocab_size, "sources": {}}
    for kind, paths in sources.items():
        ds = read_records(paths)
        if ds is None:
            continue

        def encode(batch, kind=kind):
            recs = D.parse_json_records(batch["record"], kind, batch["source"])
            ids = [TOKENIZERS[kind](tok, r) for r in recs]
            return pa.table({"ids": pa.array(ids, type=pa.list_(dtype)),
                             "n": pa.array([len(i) for i in ids], type=pa.int64())})

        fs, dest = filesystem(join(out, kind))
        ds.map_batches(encode, batch_size=512, batch_format="numpy").write_parquet(
            dest, filesystem=fs, min_rows_per_file=rows_per_file,
            row_group_size=min(rows_per_file, TS.WINDOW_RECORDS))
        written = ray.data.read_parquet(dest, filesystem=fs, columns=["n"])
        meta["sources"][kind] = {"records": written.count(), "tokens": int(written.sum("n"))}
    if "://" in out:
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / TS.META).write_text(json.dumps(meta, indent=2))
            upload_dir(d, out)
    else:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / TS.META).write_text(json.dumps(meta, indent=2))
    return meta


def token_sources(path: str, tok: Tokenizer) -> list[str]:
    """The sources of a tokenised corpus, checked against the tokenizer."""
    meta = TS.read_meta(path)
    if meta["vocab_size"] != tok.vocab_size:
        raise ValueError(f"{path} was tokenised with a vocabulary of {meta['vocab_size']}, the "
                         f"tokenizer has {tok.vocab_size}")
    return sorted(meta["sources"])


def split_eval(ds: ray.data.Dataset, fraction: float):
    """(train, eval) datasets; eval holds `fraction` of the rows (at least one), or is None when
    `fraction` is 0."""
    if fraction <= 0:
        return ds, None
    ds = ds.materialize()
    n = ds.count()
    n_eval = max(1, int(n * fraction)) if n > 1 else 0
    train, evaluation = ds.split_at_indices([n - n_eval])
    return train, evaluation
