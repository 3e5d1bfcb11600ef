"""Fine-tune a pre-trained LaMDA model on Ray Train: one model, LaMDA's task formats mixed.

    python -m jobs.finetune --run-name ft --init-from runs/ray/pt/export
    ray job submit --working-dir . -- python -m jobs.finetune --run-name ft \\
        --init-from s3://bucket/runs/pt/export --labelled s3://bucket/labelled/ --workers 8 --gpus-per-worker 1

Examples, mixed and shuffled: discriminative (`... RESPONSE r <eot> SENSIBLE <1>`, loss on the
rating) for every rated attribute of every labelled response; generative (loss on the response) for
labelled responses rated sensible and safe, and for the last (LaMDA) turn of each --dialogs record
(the output of jobs.filter_safe); research-format examples (loss on each `TS, query` /
`User, reply`).
"""

from __future__ import annotations

import argparse

from jobs.common import add_training_flags, init_ray, ray_data_quiet, run
from lamda.checkpoint import read_export_header
from lamda.data import SAMPLE_DIR


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init-from", required=True, help="export of the pre-trained model (local or s3://)")
    p.add_argument("--labelled", nargs="*", default=[str(SAMPLE_DIR / "labelled.jsonl")],
                   help="labelled responses with rater votes (JSONL or Parquet)")
    p.add_argument("--research", nargs="*", default=[],
                   help="research transcripts (e.g. jobs.tool_data's research.jsonl)")
    p.add_argument("--dialogs", nargs="*", default=[],
                   help="dialog records whose last, LaMDA turn is a generative target "
                        "(e.g. jobs.filter_safe's output directory)")
    add_training_flags(p, steps=100, lr=5e-4)
    return p


def main(argv=None):
    a = parser().parse_args(argv)
    model, tok = read_export_header(a.init_from)  # fails early and clearly when it is not there
    init_ray(a.address, a.workers * a.cpus_per_worker)
    ray_data_quiet()
    from lamda import ray_data as RD
    ds = RD.finetune_dataset(tok, a.seq_len, a.labelled, a.research, a.dialogs, a.seed)
    model = model.replace(max_seq_len=max(model.max_seq_len, a.seq_len))
    return run(a, model, tok, ds, "finetune", init_from=a.init_from)


if __name__ == "__main__":
    main()
