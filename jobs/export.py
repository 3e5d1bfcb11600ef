"""Consolidate a sharded training checkpoint into a serving export (safetensors + config + tokenizer).

    python -m jobs.export --checkpoint runs/ray/pt/checkpoint_... --out runs/exports/pt
    python -m jobs.export --checkpoint 's3://bucket/runs/pt/checkpoint_...' --out s3://bucket/exports/pt

Runs in one process (no Ray needed); training jobs also export at their end.
"""

from __future__ import annotations

from dataclasses import dataclass

from jobs.flags import parse
from lamda.checkpoint import export_checkpoint


@dataclass(frozen=True, kw_only=True)
class ExportJob:
    """The flags of jobs.export."""

    checkpoint: str  # checkpoint directory (local or s3://)
    out: str  # export destination (local or s3://)


def run(job: ExportJob) -> str:
    out = export_checkpoint(job.checkpoint, job.out)
    print(f"exported {job.checkpoint} -> {out}")
    return out


def main(argv=None) -> str:
    return run(parse(ExportJob, argv, __doc__))


if __name__ == "__main__":
    main()
