"""Ray Train throughput on this machine: one preset, 1 and 2 CPU workers (FSDP2, gloo). JSON lines.

    python bench/train_ray.py --preset tiny --workers 1 2 --steps 30 [--checkpoint-every 5]
    python bench/train_ray.py --workers 1 --cpus-per-worker 2 --batch-size 16  # one 2-thread worker
    python bench/train_ray.py --finetune runs/local/data --tokenizer runs/local/tokenizer.model \
        --batch-size 16 --seq-len 128  # make run's fine-tuning rows (a loss mask, packed examples)

tokens/s is the mean of the rates reported after the first logging interval (warm-up excluded),
over all workers together. With --checkpoint-every, each worker count runs twice, uploading
checkpoints synchronously and asynchronously: `checkpoint_wait_s` is what training waited per
checkpoint (over all but the last, whose wait the run's last metrics precede; the first upload is
synchronous either way), against `step_s`, the mean time of a step.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=8, help="per worker")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--checkpoint-every", type=int, default=0, help="0: only at the end")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="(Ray gives each worker as many "
                   "torch threads)")
    p.add_argument("--finetune", type=Path, help="rows of the fine-tuning examples in this directory "
                   "(jobs.tool_data's research, dialogs, drills and labelled) instead of pre-training rows")
    p.add_argument("--tokenizer", type=Path, help="with --finetune: the tokenizer (default: trained "
                   "on the sample data)")
    p.add_argument("--no-reshard", action="store_true", help="FSDP2 keeps each block's gathered "
                   "parameters from forward to backward (ParallelConfig.reshard_after_forward)")
    p.add_argument("--cpu-fp32", action="store_true",
                   help="train in float32 on CPU even where bf16 pays (lamda.training.cpu_bf16_pays)")
    a = p.parse_args(argv)

    import ray

    from lamda import ray_data as RD
    from lamda import ray_train as R
    from lamda.data import SAMPLE_DIR, corpus_texts, read_jsonl
    from lamda.tokenizer import Tokenizer

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    docs = [str(SAMPLE_DIR / "documents.jsonl")]
    dlgs = [str(SAMPLE_DIR / "dialogs.jsonl")]
    tok = Tokenizer.load(a.tokenizer) if a.tokenizer else Tokenizer.train(
        corpus_texts(read_jsonl(docs[0], "document"), read_jsonl(dlgs[0], "dialog")),
        vocab_size=a.vocab_size)
    if a.finetune:
        train = RD.finetune_dataset(
            tok, a.seq_len, labelled=[str(SAMPLE_DIR / "labelled.jsonl"),
                                      str(a.finetune / "labelled.jsonl")],
            research=[str(a.finetune / "research.jsonl")],
            dialogs=[str(a.finetune / f) for f in ("dialogs.jsonl", "drills.jsonl")])[0]
    else:
        train = RD.pretraining_dataset(tok, docs, dlgs, a.seq_len, 0.5)
    train = train.materialize()
    log_every = max(1, a.steps // 6)
    every = a.checkpoint_every or a.steps
    for workers, upload_async in [(w, m) for w in a.workers
                                  for m in ((False, True) if a.checkpoint_every else (True,))]:
        spec = R.RunSpec(model=R.ModelConfig.from_name(a.preset, vocab_size=tok.vocab_size,
                                                       max_seq_len=a.seq_len),
                         train=R.TrainConfig(steps=a.steps, batch_size=a.batch_size, seq_len=a.seq_len,
                                             log_every=log_every),
                         tokenizer=tok, checkpoint_every=every, eval_every=0,
                         async_checkpoint=upload_async,
                         parallel=R.ParallelConfig(cpu_bf16=not a.cpu_fp32,
                                                   reshard_after_forward=not a.no_reshard))
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            result = R.fit(spec, R.ClusterSpec(workers=workers, cpus_per_worker=a.cpus_per_worker,
                                                      storage_path=d, run_name="bench"), train)
            wall = time.perf_counter() - t0
            rates = [row["tokens_per_s"] for _, row in result.metrics_dataframe.iterrows()
                     if row["step"] > log_every]
        m, checkpoints = result.metrics, a.steps // every
        tokens_per_step = workers * a.batch_size * a.seq_len
        print(json.dumps({"bench": "train_ray", "preset": a.preset, "workers": workers,
                          "cpus_per_worker": a.cpus_per_worker, "cpu_fp32": a.cpu_fp32,
                          "rows": "finetune" if a.finetune else "pretrain",
                          "reshard_after_forward": not a.no_reshard,
                          "batch_per_worker": a.batch_size, "seq_len": a.seq_len, "steps": a.steps,
                          "tokens_per_s": round(sum(rates) / len(rates), 1),
                          "checkpoints": checkpoints,
                          "upload": "async" if upload_async else "sync",
                          "step_s": round(tokens_per_step * len(rates) / sum(rates), 4),
                          "checkpoint_wait_s": round(m["checkpoint_s"] / max(1, checkpoints - 1), 4),
                          "wall_s": round(wall, 1)}), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
