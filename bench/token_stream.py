"""A tokenised corpus read by the training ranks (lamda.token_stream) against the list-of-rows
pipeline (lamda.ray_train.pretraining_dataset: tokenise, pack, materialise, shuffle every run).
JSON lines.

    python bench/token_stream.py --copies 100 300 --seq-len 256 [--train-steps 20]

For corpora of N copies of the bundled documents and dialogs (each copy numbered):
- `tokenize`: jobs.tokenize's Ray Data job, once per corpus (seconds, files, row groups).
- `reader`: one rank of two reading one epoch of the dialog source in a fresh process: rows/s,
  the most memory arrow held at once (the window being read), the process's resident memory once
  the first window is read (above the baseline after the imports), and how much it grows over
  the rest of the epoch (arrow's allocator keeps freed pages: resident memory grows a little
  while what is held stays one window).
- `list_of_rows`: the same corpus through the list-of-rows pipeline, one consumer, one epoch:
  seconds from the start (it tokenises every run) and rows/s; Ray's object-store use after it is
  materialised.
- with --train-steps: Ray Train tokens/s of the `debug` preset on 2 workers, both pipelines.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

READER = """
import json, sys, time, psutil
import pyarrow as pa
from lamda import token_stream as TS
proc = psutil.Process()
base = proc.memory_info().rss
s = TS.SourceStream(sys.argv[1], "dialog", int(sys.argv[2]), 0, 2, seed=0)
first, peak, arrow, rows, t0 = None, base, 0, 0, time.perf_counter()
for row in s:
    rows += 1
    if s.position[1] == 1 and first is None:  # the first window read: arrow's pools are warm
        first = peak = proc.memory_info().rss
    if rows % 256 == 0:
        peak = max(peak, proc.memory_info().rss)
        arrow = max(arrow, pa.total_allocated_bytes())
    if s.position[0] == 1:
        break
dt = time.perf_counter() - t0
print(json.dumps({"rows": rows, "rows_per_s": rows / dt, "arrow_peak_mib": arrow / 2**20,
                  "rss_after_first_window_mib": (first - base) / 2**20,
                  "rss_growth_after_first_window_mib": (peak - first) / 2**20}))
"""


def write_corpus(d: Path, copies: int) -> dict[str, str]:
    """The bundled documents and dialogs `copies` times over, each copy numbered (in titles and
    first turns), as JSONL files in `d`; their paths by name (also tests/integration/test_tokens)."""
    from lamda.data import SAMPLE_DIR
    paths = {}
    for name in ("documents", "dialogs"):
        lines = (SAMPLE_DIR / f"{name}.jsonl").read_text().splitlines()
        with open(d / f"{name}.jsonl", "w") as f:
            for i in range(copies):
                for line in lines:
                    rec = json.loads(line)
                    if name == "documents":
                        rec["title"] = f"{rec['title']} ({i})"
                    else:
                        rec["turns"][0]["text"] = f"({i}) {rec['turns'][0]['text']}"
                    f.write(json.dumps(rec) + "\n")
        paths[name] = str(d / f"{name}.jsonl")
    return paths


def object_store_mib() -> float:
    import ray
    total, avail = ray.cluster_resources(), ray.available_resources()
    return (total.get("object_store_memory", 0) - avail.get("object_store_memory", 0)) / 2**20


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--copies", type=int, nargs="+", default=[100, 300])
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--vocab-size", type=int, default=1024)
    p.add_argument("--train-steps", type=int, default=0, help="0: no training runs")
    p.add_argument("--reader-only", action="store_true", help="no list-of-rows pipeline")
    a = p.parse_args(argv)

    import pyarrow.parquet as pq
    import ray

    from jobs import tokenize
    from lamda import ray_data as RD
    from lamda import ray_train as R
    from lamda.data import SAMPLE_DIR, corpus_texts, read_jsonl
    from lamda.tokenizer import Tokenizer

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    tok = Tokenizer.train(corpus_texts(read_jsonl(SAMPLE_DIR / "documents.jsonl", "document"),
                                       read_jsonl(SAMPLE_DIR / "dialogs.jsonl", "dialog")),
                          vocab_size=a.vocab_size)
    for copies in a.copies:
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            paths = write_corpus(d, copies)
            tok.save(d / "tokenizer.model")
            t0 = time.perf_counter()
            meta = tokenize.main(["--tokenizer", str(d / "tokenizer.model"), "--out", str(d / "tokens"),
                                  "--documents", paths["documents"], "--dialogs", paths["dialogs"]])
            files = list((d / "tokens").rglob("*.parquet"))
            groups = sum(pq.ParquetFile(f).metadata.num_row_groups for f in files)
            print(json.dumps({"bench": "tokenize", "copies": copies, "seconds": time.perf_counter() - t0,
                              "tokens": {k: v["tokens"] for k, v in meta["sources"].items()},
                              "files": len(files), "row_groups": groups}), flush=True)

            out = subprocess.run([sys.executable, "-c", READER, str(d / "tokens"), str(a.seq_len)],
                                 capture_output=True, text=True, check=True, cwd=ROOT)
            print(json.dumps({"bench": "reader", "copies": copies, **json.loads(out.stdout)}),
                  flush=True)

            if a.reader_only:
                continue
            t0 = time.perf_counter()
            ds = RD.pretraining_dataset(tok, [paths["documents"]], [paths["dialogs"]], a.seq_len, 0.5)
            stored = object_store_mib()
            rows = sum(len(b["tokens"]) for b in ds.iter_batches(batch_size=256, batch_format="numpy"))
            dt = time.perf_counter() - t0
            print(json.dumps({"bench": "list_of_rows", "copies": copies, "rows": rows, "seconds": dt,
                              "rows_per_s": rows / dt, "object_store_mib": stored}), flush=True)

            if a.train_steps:
                for pipeline in ("list_of_rows", "tokens"):
                    spec = R.RunSpec(
                        model=R.ModelConfig.from_name("debug", vocab_size=tok.vocab_size,
                                                      max_seq_len=a.seq_len),
                        train=R.TrainConfig(steps=a.train_steps, batch_size=8, seq_len=a.seq_len,
                                            log_every=max(1, a.train_steps // 4)),
                        tokenizer=tok, checkpoint_every=a.train_steps, eval_every=0,
                        tokens=str(d / "tokens") if pipeline == "tokens" else None,
                        mixture={"document": 0.5, "dialog": 0.5} if pipeline == "tokens" else None)
                    t0, reports = time.perf_counter(), []
                    R.fit(spec, R.ClusterSpec(workers=2, storage_path=str(d / "runs"),
                                              run_name=pipeline),
                          ds if pipeline == "list_of_rows" else None, on_report=reports.append)
                    rates = [m["tokens_per_s"] for m in reports][1:]  # after the first interval
                    print(json.dumps({"bench": "train", "pipeline": pipeline, "copies": copies,
                                      "tokens_per_s": sum(rates) / len(rates),
                                      "wall_s": time.perf_counter() - t0}), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
