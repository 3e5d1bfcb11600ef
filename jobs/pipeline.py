"""The LaMDA pipeline as one job: tokenizer -> pre-training -> fine-tuning (more stages follow).

    python -m jobs.pipeline [--workdir runs/local] [--preset tiny] [--workers 2]
    ray job submit --working-dir . -- python -m jobs.pipeline --workdir s3://bucket/lamda ...

Each stage prints a progress line and is skipped when its output exists; training stages resume
from their latest checkpoint (delete the workdir to start over). Runs on the Ray cluster of
`ray job submit`, or on a local Ray started for the job.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jobs import finetune, pretrain
from jobs.common import init_ray
from jobs.train_tokenizer import train_tokenizer
from lamda.config import PRESETS
from lamda.data import SAMPLE_DIR
from lamda.tokenizer import Tokenizer


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("runs/local"), help="outputs of every stage")
    p.add_argument("--data-dir", type=Path, default=SAMPLE_DIR, help="corpus (bundled sample)")
    p.add_argument("--preset", default="tiny", choices=list(PRESETS), help="model size")
    p.add_argument("--vocab-size", type=int, default=4096, help="tokenizer vocabulary")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers")
    p.add_argument("--gpus-per-worker", type=float, default=0.0)
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--pretrain-steps", type=int, default=150)
    p.add_argument("--finetune-steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=8, help="per worker")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--address", default=None, help="Ray address (default: job's cluster or local)")
    return p


def main(argv=None) -> None:
    a = parser().parse_args(argv)
    work, data = a.workdir.resolve(), a.data_dir
    init_ray(a.address, a.workers * a.cpus_per_worker)
    common = ["--storage-path", str(work / "ray"), "--workers", str(a.workers),
              "--gpus-per-worker", str(a.gpus_per_worker), "--cpus-per-worker", str(a.cpus_per_worker),
              "--batch-size", str(a.batch_size),
              "--seq-len", str(a.seq_len)]

    tok_path = work / "tokenizer.model"
    print("[1/3] tokenizer", flush=True)
    if tok_path.exists():
        print(f"  exists: {tok_path} ({Tokenizer.load(tok_path).vocab_size} pieces)")
    else:
        train_tokenizer([data / "documents.jsonl"], [data / "dialogs.jsonl"], a.vocab_size, tok_path)

    pretrained = work / "pretrained"
    print("[2/3] pre-training", flush=True)
    if (pretrained / "manifest.json").exists():
        print(f"  exists: {pretrained}")
    else:
        pretrain.main(["--run-name", "pretrain", "--preset", a.preset, "--tokenizer", str(tok_path),
                       "--documents", str(data / "documents.jsonl"),
                       "--dialogs", str(data / "dialogs.jsonl"), "--steps", str(a.pretrain_steps),
                       "--export", str(pretrained), *common])

    finetuned = work / "finetuned"
    print("[3/3] fine-tuning", flush=True)
    if (finetuned / "manifest.json").exists():
        print(f"  exists: {finetuned}")
    else:
        finetune.main(["--run-name", "finetune", "--init-from", str(pretrained),
                       "--labelled", str(data / "labelled.jsonl"),
                       "--research", str(data / "research.jsonl"),
                       "--steps", str(a.finetune_steps), "--export", str(finetuned), *common])
    print(f"pipeline done: {finetuned}")


if __name__ == "__main__":
    main()
