"""Timing of short GPU work for the benchmarks."""

from __future__ import annotations

import statistics
import time

import torch


def median_ms(fn, device: str, reps: int = 20, warmup: int = 1) -> float:
    """Median milliseconds of fn() over `reps` calls after `warmup` untimed ones: CUDA events on
    GPU (kernel time, not host waits), wall time on CPU."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return round(statistics.median(times), 4)
