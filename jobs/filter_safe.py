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

import argparse
import json

from jobs.common import init_ray, ray_data_quiet
from lamda.checkpoint import read_export_header
from lamda.data import ATTRIBUTES
from lamda.safety_filter import FilterConfig, TurnScorer


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="export of a fine-tuned model (local or s3://)")
    p.add_argument("--dialogs", nargs="+", required=True, help="dialog files (JSONL/Parquet, local or s3://)")
    p.add_argument("--out", required=True, help="output directory (local or s3://)")
    p.add_argument("--max-unsafe", type=float, default=0.5, help="keep turns with P(unsafe) below this")
    p.add_argument("--min-quality", type=float, default=0.0, help="and 3S+Sp+I at least this (0..5)")
    p.add_argument("--top-fraction", type=float, default=1.0,
                   help="and among this best fraction of the safe turns (paper: 800K of 2.5M)")
    p.add_argument("--actors", type=int, default=1, help="scoring actors")
    p.add_argument("--batch-size", type=int, default=64, help="dialogs per actor call")
    p.add_argument("--cpus-per-actor", type=float, default=1.0)
    p.add_argument("--gpus-per-actor", type=float, default=0.0)
    p.add_argument("--address", default=None, help="Ray address (default: job's cluster or local)")
    return p


def main(argv=None) -> dict:
    a = parser().parse_args(argv)
    read_export_header(a.model)  # a clear error now rather than inside every actor
    cfg = FilterConfig(a.max_unsafe, a.min_quality, a.top_fraction)
    init_ray(a.address, a.actors * a.cpus_per_actor)
    ray_data_quiet()
    import ray.data
    from ray.data.expressions import col
    from lamda.ray_data import read_records
    scored = read_records(a.dialogs).map_batches(
        TurnScorer, fn_constructor_kwargs={"export": a.model,
                                           "device": "cuda" if a.gpus_per_actor else "cpu"},
        batch_size=a.batch_size, compute=ray.data.ActorPoolStrategy(size=a.actors),
        num_cpus=a.cpus_per_actor,
        num_gpus=a.gpus_per_actor or None).materialize()
    n_in = scored.count()
    kept = scored.filter(expr=(col("unsafe") < cfg.max_unsafe)  # FilterConfig.passes
                         & (col("quality") >= cfg.min_quality))
    n_pass = kept.count()
    if cfg.top_fraction < 1.0:
        kept = kept.sort("quality", descending=True).limit(int(n_pass * cfg.top_fraction))
    kept = kept.materialize()
    n_out = kept.count()
    kept.map(lambda r: json.loads(r["dialog"]) | {"scores": {k: r[k] for k in (
        *ATTRIBUTES, "quality")}}).write_json(a.out)
    counts = {"turns_in": n_in, "passed_thresholds": n_pass, "kept": n_out, "out": a.out}
    print(f"filter_safe: {n_in} LaMDA turns scored, {n_pass} pass the thresholds, {n_out} kept "
          f"-> {a.out}")
    return counts


if __name__ == "__main__":
    main()
