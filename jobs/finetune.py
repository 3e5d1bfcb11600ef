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

from dataclasses import dataclass, field

from jobs.common import TrainJob, init_ray, ray_data_quiet, train
from jobs.flags import parse
from lamda.checkpoint import read_export_header
from lamda.data import SAMPLE_DIR
from lamda.training import TrainConfig

TRAIN = TrainConfig(steps=100, lr=5e-4)  # fine-tuning's defaults


@dataclass(frozen=True, kw_only=True)
class FinetuneJob(TrainJob):
    """The flags of jobs.finetune."""

    init_from: str  # export of the pre-trained model (local or s3://)
    labelled: tuple[str, ...] = (str(SAMPLE_DIR / "labelled.jsonl"),)  # labelled responses with
    #                                                 rater votes (JSONL or Parquet)
    research: tuple[str, ...] = ()  # research transcripts (e.g. jobs.tool_data's research.jsonl)
    dialogs: tuple[str, ...] = ()  # dialog records whose last, LaMDA turn is a generative target
    #                                (e.g. jobs.filter_safe's output directory)
    train: TrainConfig = field(default=TRAIN, metadata={"skip": ("dialog_fraction",)})  # no mixture


def run(job: FinetuneJob):
    deadline = job.budget.deadline()  # its data's packing counts against the budget
    model, tok = read_export_header(job.init_from)  # fails early and clearly when it is not there
    init_ray(job.address, job.cluster.workers * job.cluster.cpus_per_worker)
    ray_data_quiet()
    from lamda import ray_data as RD
    seq_len = job.train.seq_len
    ds, counts = RD.finetune_dataset(tok, seq_len, job.labelled, job.research, job.dialogs,
                                     job.train.seed)
    print(f"  {counts['examples']:,} fine-tuning examples" + (
        f"; {counts['left_out']:,} longer than a row of {seq_len + 1} tokens left out (raise "
        f"--seq-len to keep them)" if counts["left_out"] else ""), flush=True)
    model = model.replace(max_seq_len=max(model.max_seq_len, seq_len))
    return train(job, model, tok, ds, "finetune", init_from=job.init_from, deadline=deadline)


def main(argv=None):
    return run(parse(FinetuneJob, argv, __doc__))


if __name__ == "__main__":
    main()
