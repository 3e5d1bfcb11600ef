"""Safe-data filtering: score every LaMDA turn of a dialog dataset with the discriminators of a
fine-tuned model and keep the safe, high-quality turns as a new dataset for jobs.finetune.

    python -m jobs.filter_safe --model runs/local/finetuned --dialogs data/sample/dialogs.jsonl \\
        --out runs/local/safe_dialogs --max-unsafe 0.5 --top-fraction 0.5
    ray job submit --working-dir . -- python -m jobs.filter_safe --model s3://bucket/exports/ft \\
        --dialogs s3://bucket/dialogs/ --out s3://bucket/safe/ --actors 8 --gpus-per-actor 1

Output: a directory of JSONL dialog records, one per kept turn (its context, then the turn, plus
its scores), which `jobs.finetune --dialogs OUT` trains on (loss on the kept turn).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from jobs.common import init_ray, ray_data_quiet
from jobs.flags import parse
from lamda.checkpoint import read_export_header
from lamda.data import ATTRIBUTES
from lamda.safety_filter import FilterConfig, TurnScorer


@dataclass(frozen=True, kw_only=True)
class FilterJob:
    """The flags of jobs.filter_safe."""

    model: str  # export of a fine-tuned model (local or s3://)
    dialogs: tuple[str, ...]  # dialog files (JSONL/Parquet, local or s3://)
    out: str  # output directory (local or s3://)
    filter: FilterConfig = FilterConfig()
    actors: int = 1  # scoring actors
    batch_size: int = 64  # dialogs per actor call
    cpus_per_actor: float = 1.0  # logical CPUs per scoring actor
    gpus_per_actor: float = 0.0  # GPUs per scoring actor (0: score on CPU)
    address: str | None = None  # Ray address (default: the job's cluster or a local Ray)


def run(job: FilterJob) -> dict:
    cfg = job.filter
    read_export_header(job.model)  # a clear error now rather than inside every actor
    init_ray(job.address, job.actors * job.cpus_per_actor)
    ray_data_quiet()
    import ray.data
    from ray.data.expressions import col
    from lamda.ray_data import read_records
    scored = read_records(job.dialogs).map_batches(
        TurnScorer, fn_constructor_kwargs={"export": job.model,
                                           "device": "cuda" if job.gpus_per_actor else "cpu"},
        batch_size=job.batch_size, compute=ray.data.ActorPoolStrategy(size=job.actors),
        num_cpus=job.cpus_per_actor,
        num_gpus=job.gpus_per_actor or None).materialize()
    n_in = scored.count()
    kept = scored.filter(expr=(col("unsafe") < cfg.max_unsafe)  # FilterConfig.passes
                         & (col("quality") >= cfg.min_quality))
    n_pass = kept.count()
    if cfg.top_fraction < 1.0:
        kept = kept.sort("quality", descending=True).limit(int(n_pass * cfg.top_fraction))
    kept = kept.materialize()
    n_out = kept.count()
    kept.map(lambda r: json.loads(r["dialog"]) | {"scores": {k: r[k] for k in (
        *ATTRIBUTES, "quality")}}).write_json(job.out)
    counts = {"turns_in": n_in, "passed_thresholds": n_pass, "kept": n_out, "out": job.out}
    print(f"filter_safe: {n_in} LaMDA turns scored, {n_pass} pass the thresholds, {n_out} kept "
          f"-> {job.out}")
    return counts


def main(argv=None) -> dict:
    return run(parse(FilterJob, argv, __doc__))


if __name__ == "__main__":
    main()
