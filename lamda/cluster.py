"""Where a training run runs and keeps its checkpoints: the part of the trainer's settings that
the jobs read without importing Ray (lamda.ray_train runs them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ClusterSpec:
    """Where a training run runs and keeps its checkpoints."""

    workers: int = 2  # Ray Train workers (one process each)
    gpus_per_worker: float = 0.0  # 0: CPU workers with gloo; otherwise NCCL
    cpus_per_worker: float = 1.0  # logical CPUs per worker
    storage_path: str = "runs/ray"  # local directory or s3://bucket/prefix[?endpoint_override=...]
    run_name: str = "lamda"  # re-running with the same name resumes the run
    max_failures: int = 2  # worker-group restarts before the run fails
    keep_checkpoints: int = 2  # the latest checkpoints kept (older ones are deleted)
    log_level: str = "WARNING"  # Ray Train's own console logs (our per-step lines always show)


def storage_uri(path: str) -> str:
    """Ray wants an absolute local path or a URI."""
    return path if "://" in path else str(Path(path).resolve())
