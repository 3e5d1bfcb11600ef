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

from dataclasses import dataclass, field

from jobs.common import TrainJob, init_ray, load_tokenizer, ray_data_quiet, train
from jobs.flags import parse
from lamda.attention import BACKEND_NAMES
from lamda.config import PRESETS, AttentionKernels, ModelConfig
from lamda.data import SAMPLE_DIR
from lamda.training import TrainConfig

TRAIN = TrainConfig(steps=200, lr=2e-3)  # pre-training's defaults


@dataclass(frozen=True, kw_only=True)
class PretrainJob(TrainJob):
    """The flags of jobs.pretrain."""

    tokenizer: str  # tokenizer.model (local or s3://)
    preset: str = field(default="tiny", metadata={"choices": list(PRESETS)})  # model size
    documents: tuple[str, ...] = (str(SAMPLE_DIR / "documents.jsonl"),)  # document files (JSONL
    #                                                   or Parquet, local or s3://)
    dialogs: tuple[str, ...] = (str(SAMPLE_DIR / "dialogs.jsonl"),)  # dialog files (JSONL or
    #                                               Parquet, local or s3://)
    tokens: str | None = None  # a corpus tokenised by jobs.tokenize (local or s3://), read by each
    #                            worker a window of records at a time: nothing materialised, no
    #                            global shuffle (then --documents/--dialogs are not read; the
    #                            evaluation rows are each source's last window)
    attn_backend: str = field(default="auto", metadata={"choices": BACKEND_NAMES})  # attention
    #                                                                 backend (lamda.attention)
    attn_kernels: AttentionKernels = AttentionKernels()
    train: TrainConfig = TRAIN


def run(job: PretrainJob):
    deadline = job.budget.deadline()  # its data's preparation counts against the budget
    tok = load_tokenizer(job.tokenizer)
    init_ray(job.address, job.cluster.workers * job.cluster.cpus_per_worker)
    ray_data_quiet()
    from lamda import ray_data as RD
    seq_len, fraction = job.train.seq_len, job.train.dialog_fraction
    model = ModelConfig.from_name(job.preset, vocab_size=tok.vocab_size,
                                  max_seq_len=max(seq_len, PRESETS[job.preset].max_seq_len),
                                  attn_backend=job.attn_backend, attn_kernels=job.attn_kernels)
    if job.tokens:
        mixture = {"document": 1 - fraction, "dialog": fraction}
        sources = RD.token_sources(job.tokens, tok)
        return train(job, model, tok, None, "pretrain", tokens=job.tokens,
                     mixture={k: mixture[k] for k in sources if mixture[k] > 0},
                     deadline=deadline)
    ds = RD.pretraining_dataset(tok, job.documents, job.dialogs, seq_len, fraction, job.train.seed)
    return train(job, model, tok, ds, "pretrain", deadline=deadline)


def main(argv=None):
    return run(parse(PretrainJob, argv, __doc__))


if __name__ == "__main__":
    main()
