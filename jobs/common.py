"""Settings and set-up shared by the jobs."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field

from tqdm import tqdm

from lamda.cluster import ClusterSpec, storage_uri
from lamda.parallel import ParallelConfig
from lamda.storage import fetch_file, join
from lamda.tokenizer import Tokenizer
from lamda.training import StepBudget, TrainConfig


@dataclass(frozen=True, kw_only=True)
class TrainJob:
    """Where a training job runs and how it trains: the flags jobs.pretrain and jobs.finetune share."""

    run_name: str  # re-running with the same name resumes
    address: str | None = None  # Ray address; default: the cluster of `ray job submit` (RAY_ADDRESS),
    #                             else a local Ray started for this job
    cluster: ClusterSpec = field(default=ClusterSpec(), metadata={"skip": ("run_name",)})
    train: TrainConfig  # each job gives its own defaults
    budget: StepBudget = StepBudget()  # with minutes: the steps re-planned to end in time
    parallel: ParallelConfig = field(default=ParallelConfig(), metadata={"skip": ("fsdp", "bf16")})
    export: str | None = None  # where to write the safetensors export (default: <storage>/<run>/export)
    export_shard_mb: float = 2048  # at most this many MB per export file (the export is sharded)
    checkpoint_every: int = 50  # steps between checkpoints (the last step always checkpoints)
    sync_checkpoints: bool = False  # wait for every checkpoint's upload (default: upload while training)
    eval_every: int = 50  # steps between evaluation losses (0: none, and no rows held out for it)
    eval_fraction: float = 0.05  # rows held out for evaluation
    peak_tflops: float | None = None  # per device, for MFU (default: known GPUs by name)
    watts: float | None = None  # per device, for modelled energy where NVML has no energy counter

    def export_path(self) -> str:
        return self.export or join(storage_uri(self.cluster.storage_path), self.run_name, "export")


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
    slow_machine_serve()
    ctx = ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(cpus) + 2),
                   include_dashboard=True, log_to_driver=False, logging_level=logging.WARNING)
    print(f"local Ray, logs in {ctx.address_info['session_dir']}/logs", flush=True)
    return True


def slow_machine_serve() -> None:
    """Give a Serve proxy 60 s to start (Ray's default is 5 s) in the local Ray about to start:
    on a busy 2-core machine one took longer, and Serve killed it, which made `serve.start` fail
    with ActorDiedError."""
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")


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
        if m.get("steps", self.bar.total) != self.bar.total:
            self.bar.write(f"  {m['steps']} steps fit the time budget (planned from the "
                           f"training's own rate)", file=sys.stdout)
            self.bar.total = m["steps"]
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


def train(job: TrainJob, model, tok: Tokenizer, ds, stage: str, init_from: str | None = None,
          tokens: str | None = None, mixture: dict[str, float] | None = None,
          deadline: float | None = None):
    """Hold out the evaluation rows, then train on Ray Train as `job` says; returns the Result.
    With `tokens` (a tokenised corpus, no `ds`), the sources are mixed as `mixture` says.
    `deadline`: job.budget's, taken when the job started (default: now)."""
    from lamda import ray_data as RD
    from lamda import ray_train as R
    held_out = job.eval_fraction if job.eval_every and ds is not None else 0.0  # no rows unused
    train_rows, evaluation = RD.split_eval(ds, held_out) if ds is not None else (None, None)
    parallel = dataclasses.replace(job.parallel, bf16=job.cluster.gpus_per_worker > 0)
    spec = R.RunSpec(model=model, train=job.train, tokenizer=tok, parallel=parallel,
                     init_from=init_from, export_to=job.export_path(),
                     export_shard_bytes=int(job.export_shard_mb * 2**20),
                     async_checkpoint=not job.sync_checkpoints,
                     checkpoint_every=job.checkpoint_every, eval_every=job.eval_every,
                     peak_flops=job.peak_tflops and job.peak_tflops * 1e12, watts=job.watts,
                     stage=stage, tokens=tokens, mixture=mixture, budget=job.budget,
                     deadline=deadline or job.budget.deadline())
    cluster = dataclasses.replace(job.cluster, run_name=job.run_name)
    progress = TrainProgress(stage, job.train.steps)
    try:
        result = R.fit(spec, cluster, train_rows, evaluation, on_report=progress)
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
