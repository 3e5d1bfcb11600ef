"""Flags and set-up shared by the training jobs."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile

from tqdm import tqdm

from lamda.parallel import ParallelConfig
from lamda.storage import fetch_file, join
from lamda.tokenizer import Tokenizer
from lamda.training import TrainConfig


def add_training_flags(p: argparse.ArgumentParser, *, steps: int, lr: float) -> None:
    g = p.add_argument_group("cluster")
    g.add_argument("--address", default=None,
                   help="Ray address; default: the cluster of `ray job submit` (RAY_ADDRESS), "
                        "else a local Ray started for this job")
    g.add_argument("--workers", type=int, default=2, help="Ray Train workers")
    g.add_argument("--gpus-per-worker", type=float, default=0.0, help="0: CPU workers (gloo)")
    g.add_argument("--cpus-per-worker", type=float, default=1.0)
    g.add_argument("--storage-path", default="runs/ray",
                   help="checkpoints: a directory or s3://bucket/prefix[?endpoint_override=HOST:PORT&scheme=http]")
    g.add_argument("--run-name", required=True, help="re-running with the same name resumes")
    g.add_argument("--max-failures", type=int, default=2, help="worker-group restarts allowed")
    g.add_argument("--export", default=None,
                   help="where to write the safetensors export (default: <storage>/<run>/export)")
    g.add_argument("--export-shard-mb", type=float, default=2048,
                   help="at most this many MB per export file (the export is sharded)")
    t = p.add_argument_group("training")
    t.add_argument("--steps", type=int, default=steps)
    t.add_argument("--batch-size", type=int, default=8, help="sequences per worker per micro-batch")
    t.add_argument("--seq-len", type=int, default=256)
    t.add_argument("--grad-accum", type=int, default=1)
    t.add_argument("--lr", type=float, default=lr)
    t.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: steps / 10)")
    t.add_argument("--checkpoint-every", type=int, default=50)
    t.add_argument("--sync-checkpoints", action="store_true",
                   help="wait for every checkpoint's upload (default: upload while training)")
    t.add_argument("--eval-every", type=int, default=50,
                   help="0: no evaluation (and no rows held out for it)")
    t.add_argument("--eval-fraction", type=float, default=0.05, help="rows held out for evaluation")
    t.add_argument("--log-every", type=int, default=10)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--compile", action="store_true", help="torch.compile each block")
    t.add_argument("--activation-checkpointing", action="store_true")
    t.add_argument("--tp", type=int, default=1,
                   help="tensor-parallel degree (heads and FFN split over this many workers of a "
                        "node; FSDP over the rest: a 2-D mesh)")
    t.add_argument("--peak-tflops", type=float, default=None,
                   help="per device, for MFU (default: known GPUs by name)")
    t.add_argument("--watts", type=float, default=None,
                   help="per device, for modelled energy where NVML has no energy counter")


def train_config(a) -> TrainConfig:
    return TrainConfig(steps=a.steps, batch_size=a.batch_size, seq_len=a.seq_len,
                       grad_accum=a.grad_accum, lr=a.lr,
                       warmup_steps=a.warmup if a.warmup is not None else max(1, a.steps // 10),
                       log_every=a.log_every, seed=a.seed,
                       dialog_fraction=getattr(a, "dialog_fraction", 0.5))


def parallel_config(a) -> ParallelConfig:
    return ParallelConfig(tp=a.tp, activation_checkpointing=a.activation_checkpointing,
                          compile=a.compile, bf16=a.gpus_per_worker > 0)


def export_path(a) -> str:
    return a.export or join(a.storage_path if "://" in a.storage_path
                            else os.path.abspath(a.storage_path), a.run_name, "export")


def load_tokenizer(uri: str) -> Tokenizer:
    with tempfile.TemporaryDirectory() as d:
        return Tokenizer.load(fetch_file(uri, d))


def init_ray(address: str | None, cpus: float = 2.0) -> bool:
    """Connect to `address`, or to the cluster of `ray job submit` (RAY_ADDRESS), or start a local
    Ray with at least `cpus` + 2 logical CPUs (the job's workers plus Ray Data). True when it
    started a local Ray: the caller then owns it (`shutdown_ray`).

    A local Ray keeps its processes' output and its own logs in its session directory (printed):
    the console shows the job's progress, and worker errors still reach it through the exceptions
    Ray raises in the driver. Its dashboard serves the state API that Ray Train's placement-group
    cleaner polls for the run's controller. One machine has no node to preempt: no Ray Train
    preemption watcher (an actor per run that Ray core reports as an error, ray#53727)."""
    import ray
    if ray.is_initialized():  # e.g. called from the pipeline job
        return False
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address)
        return False
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    ctx = ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(cpus) + 2),
                   include_dashboard=True, log_to_driver=False, logging_level=logging.WARNING)
    print(f"local Ray, logs in {ctx.address_info['session_dir']}/logs", flush=True)
    return True


def shutdown_ray() -> None:
    """Stop the local Ray that init_ray started; first, if this job used Serve, delete its apps,
    which lets their replicas finish (serve.shutdown() does too, but then reports its killed
    controller's shutdown call as a failed task on the console)."""
    import ray
    if "ray.serve" in sys.modules:
        from ray import serve
        for name in serve.status().applications:
            serve.delete(name)
    ray.shutdown()


class TrainProgress:
    """One progress line for a training run: step, loss, tokens/s, elapsed time and ETA
    (the `on_report` of lamda.ray_train.fit)."""

    def __init__(self, stage: str, steps: int):
        # the terminal's size: 80 x 24 where it reports none (tqdm would then show nothing)
        size = shutil.get_terminal_size() if sys.stdout.isatty() else os.terminal_size((0, 0))
        self.bar = tqdm(total=steps, desc=f"  {stage}", file=sys.stdout,
                        ncols=size.columns or None, nrows=size.lines or None,
                        bar_format="{desc} {bar:20} {n}/{total} [{elapsed}{postfix}]")
        self.bar.set_postfix_str("starting workers", refresh=True)
        self.restarts = None

    def __call__(self, m: dict) -> None:
        restarts = m.get("restarts", [])
        for step in restarts[-1:] if self.restarts is None else restarts[len(self.restarts):]:
            self.bar.write(f"  resumed from the checkpoint at step {step}", file=sys.stdout)
        self.restarts = restarts
        tps = m["tokens_per_s"]
        eta = (self.bar.total - m["step"]) * m["tokens"] / m["step"] / tps if tps else None
        shown = [f"ETA {tqdm.format_interval(eta) if eta is not None else '?'}",
                 f"loss {m['loss']:.4f}"]
        if m.get("eval_loss") is not None:
            shown.append(f"eval {m['eval_loss']:.4f}")
        self.bar.n = m["step"]
        self.bar.set_postfix_str(", ".join(shown + [f"{tps:,.0f} tok/s"]))

    def close(self) -> None:
        self.bar.close()


def run(a, model, tok: Tokenizer, ds, stage: str, init_from: str | None = None,
        tokens: str | None = None, mixture: dict[str, float] | None = None):
    """Hold out the evaluation rows, then train on Ray Train as the flags say; returns the Result.
    With `tokens` (a tokenised corpus, no `ds`), the sources are mixed as `mixture` says."""
    from lamda import ray_data as RD
    from lamda import ray_train as R
    held_out = a.eval_fraction if a.eval_every and ds is not None else 0.0  # no rows unused
    train, evaluation = RD.split_eval(ds, held_out, a.seed) if ds is not None else (None, None)
    spec = R.RunSpec(model=model, train=train_config(a), tokenizer=tok, parallel=parallel_config(a),
                     init_from=init_from, export_to=export_path(a),
                     export_shard_bytes=int(a.export_shard_mb * 2**20),
                     async_checkpoint=not a.sync_checkpoints,
                     checkpoint_every=a.checkpoint_every, eval_every=a.eval_every,
                     peak_flops=a.peak_tflops and a.peak_tflops * 1e12, watts=a.watts, stage=stage,
                     tokens=tokens, mixture=mixture)
    cluster = R.ClusterSpec(workers=a.workers, gpus_per_worker=a.gpus_per_worker,
                            cpus_per_worker=a.cpus_per_worker, storage_path=a.storage_path,
                            run_name=a.run_name, max_failures=a.max_failures)
    progress = TrainProgress(stage, a.steps)
    try:
        result = R.fit(spec, cluster, train, evaluation, on_report=progress)
    finally:
        progress.close()
    print(f"done: step {result.metrics['step']}, loss {result.metrics['loss']:.4f}, "
          f"export {spec.export_to}")
    return result


def ray_data_quiet() -> None:
    """No Ray Data progress bars or log lines on the console in training jobs (the training
    progress says enough): its log stays in ray-data.log in Ray's log directory."""
    import ray.data
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    for h in logging.getLogger("ray.data").handlers:
        if isinstance(h, logging.StreamHandler):  # the console; errors still show
            h.setLevel(logging.ERROR)
