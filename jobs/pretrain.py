"""Pre-train a LaMDA model on documents + dialogs with Ray Train (FSDP2 across workers).

    python -m jobs.pretrain --run-name pt --tokenizer runs/local/tokenizer.model --preset tiny
    ray job submit --working-dir . -- python -m jobs.pretrain --run-name pt --tokenizer s3://... \\
        --documents s3://bucket/docs/ --dialogs s3://bucket/dialogs/ --storage-path s3://bucket/runs \\
        --preset 2b --workers 8 --gpus-per-worker 1

Data: JSONL files or Parquet files/directories, local or s3://. Checkpoints go to
<storage-path>/<run-name>; re-running with the same run name resumes. At the end the model is
exported as safetensors + config + tokenizer (--export).
"""

from __future__ import annotations

import argparse

from jobs.common import add_training_flags, init_ray, load_tokenizer, ray_data_quiet, run
from lamda.config import PRESETS, ModelConfig
from lamda.data import SAMPLE_DIR


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", choices=list(PRESETS), help="model size")
    p.add_argument("--tokenizer", required=True, help="tokenizer.model (local or s3://)")
    p.add_argument("--documents", nargs="*", default=[str(SAMPLE_DIR / "documents.jsonl")],
                   help="document files (JSONL or Parquet, local or s3://)")
    p.add_argument("--dialogs", nargs="*", default=[str(SAMPLE_DIR / "dialogs.jsonl")],
                   help="dialog files (JSONL or Parquet, local or s3://)")
    p.add_argument("--tokens", default=None,
                   help="a corpus tokenised by jobs.tokenize (local or s3://), read by each "
                        "worker a window of records at a time: nothing materialised, no global "
                        "shuffle (then --documents/--dialogs are not read; the evaluation rows "
                        "are each source's last window)")
    p.add_argument("--dialog-fraction", type=float, default=0.5,
                   help="share of dialog sequences in the mixture (paper: 0.5)")
    add_training_flags(p, steps=200, lr=2e-3)
    return p


def main(argv=None):
    a = parser().parse_args(argv)
    tok = load_tokenizer(a.tokenizer)
    init_ray(a.address, a.workers * a.cpus_per_worker)
    ray_data_quiet()
    from lamda import ray_data as RD
    model = ModelConfig.from_name(a.preset, vocab_size=tok.vocab_size,
                                  max_seq_len=max(a.seq_len, PRESETS[a.preset].max_seq_len))
    if a.tokens:
        mixture = {"document": 1 - a.dialog_fraction, "dialog": a.dialog_fraction}
        sources = RD.token_sources(a.tokens, tok)
        return run(a, model, tok, None, "pretrain", tokens=a.tokens,
                   mixture={k: mixture[k] for k in sources if mixture[k] > 0})
    ds = RD.pretraining_dataset(tok, a.documents, a.dialogs, a.seq_len, a.dialog_fraction, a.seed)
    return run(a, model, tok, ds, "pretrain")


if __name__ == "__main__":
    main()
