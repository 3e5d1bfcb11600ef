"""Sharded training on Ray: the Ray Train worker loop and the trainer. The rows come from
lamda.ray_data's Ray Data pipelines, or, for a tokenised corpus, each worker reads its windows
itself (lamda.token_stream).

With lamda.ray_data, the one module of `lamda` that imports Ray. Everything it does per batch or
per step is a plain function from lamda.data / lamda.training / lamda.parallel.

Checkpoints are torch.distributed.checkpoint (DCP) shards reported through `ray.train.report`:
every rank writes its shard, Ray merges them into one directory under
`RunConfig.storage_path/<run name>/` (a local path or s3://...), and registers the checkpoint only
once all ranks have uploaded; so `ray.train.get_checkpoint()` only ever returns a complete one.
After the first, checkpoints upload while training goes on (`RunSpec.async_checkpoint`); a new
one is reported only once the previous one is registered, so a crash at any point resumes from a
registered checkpoint, never from scratch once one was reported. `checkpoint_s` in the metrics is
the time training waited for checkpoints.
Rank 0 adds `config.json`, `tokenizer.model` and `train_state.json` (step, data position, tokens,
energy). A restarted worker group (FailureConfig) or a re-run with the same run name resumes from
the latest checkpoint: same step counter, same epoch and batch position in the data. At the end
the ranks write the model as a sharded safetensors export (lamda.checkpoint.save_sharded_export),
without gathering it anywhere.

Rank 0 logs a line per log interval (Ray's worker logs) and can send its metrics to the driver
(`fit(on_report=...)`), which shows the progress. Ctrl-C in the driver aborts the run, keeping its
checkpoints, and raises KeyboardInterrupt.

A step with a non-finite loss or gradient norm is skipped (lamda.training.train_step), logged and
counted (`lamda_train_skipped_steps`); after `TrainConfig.max_nonfinite_steps` in a row every rank
stops without writing a checkpoint (the failure policy restarts from the last one, which clears a
transient fault) and `fit` raises NonFiniteTraining naming it.

With a time budget (`RunSpec.budget`, lamda.training.StepBudget), the steps are re-planned once,
after `replan_after` steps timed from the first log interval (after the first checkpoint, where one
comes within those steps), to end by `RunSpec.deadline` at rank 0's rate; every rank takes rank
0's figure, and `train_state.json` keeps it for a resumed run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.fs
import ray
import ray.data
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_state_dict,
                                                     set_model_state_dict, set_state_dict)

from lamda import data as D
from lamda import token_stream as TS
from lamda.accounting import EnergyMeter, hardware, mfu
from lamda.checkpoint import (CONFIG, TOKENIZER, TRAIN_STATE, check_checkpoint_dir, load_export,
                              save_sharded_export)
from lamda.cluster import ClusterSpec, storage_uri
from lamda.config import ModelConfig
from lamda.model import build_model, lm_loss
from lamda.parallel import ParallelConfig, init_weights, parallelize
from lamda.ray_data import token_sources
from lamda.tokenizer import Tokenizer
from lamda.training import (StepBudget, TrainConfig, build_optimizer, cpu_bf16_pays,
                            cpu_bf16_speedup, steps_within, train_step, warmup_steps)

log = logging.getLogger(__name__)

# -- the worker loop ----------------------------------------------------------------------------

@dataclass(frozen=True)
class RunSpec:
    """Everything a worker needs; sent to every worker as the train_loop_config."""

    model: ModelConfig
    train: TrainConfig
    tokenizer: Tokenizer
    parallel: ParallelConfig = ParallelConfig()
    init_from: str | None = None  # an export to start from (fine-tuning); None: fresh weights
    export_to: str | None = None  # where the ranks write the sharded export at the end
    export_shard_bytes: int = 2 << 30  # at most this much per export file (one tensor may exceed it)
    checkpoint_every: int = 50  # steps between checkpoints (the last step always checkpoints)
    eval_every: int = 50  # steps between evaluation losses (0: never)
    eval_batches: int = 4  # batches per evaluation, per worker
    peak_flops: float | None = None  # per device, for MFU; None: from the GPU's name (no MFU on CPU)
    watts: float | None = None  # per device, for modelled energy without NVML; None: by hardware
    stage: str = "pretrain"  # recorded in checkpoints and exports
    tokens: str | None = None  # a tokenised corpus (jobs.tokenize), read by each rank itself
    mixture: dict[str, float] | None = None  # with `tokens`: each source's share of the rows
    async_checkpoint: bool = True  # upload checkpoints while training goes on (after the first)
    budget: StepBudget = StepBudget()  # a time limit on the steps (re-planned once from the rate)
    deadline: float | None = None  # the Unix time the job's steps end by (budget.deadline())
    # called by every worker after each step with (step, rank, world size); must pickle (a test's
    # fault injection: tests/integration/conftest.py KillWorker)
    after_step: Callable[[int, int, int], None] | None = None


class NonFiniteTraining(RuntimeError):
    """The run stopped after TrainConfig.max_nonfinite_steps non-finite steps in a row."""


@dataclass
class TrainState:
    """Progress saved with every checkpoint (JSON)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of this epoch already consumed by this rank
    tokens: int = 0  # tokens trained on, all ranks
    energy_kwh: float = 0.0  # all ranks
    restarts: list[int] = field(default_factory=list)  # steps that training resumed from
    skipped: int = 0  # steps skipped for a non-finite loss or gradient norm
    checkpoint_s: float = 0.0  # seconds training waited for checkpoints (rank 0)
    sources: dict[str, list] = field(default_factory=dict)  # tokens: per source, per rank
    # [epoch, window, row] (token_stream.SourceStream.position), gathered at each checkpoint
    draws: int = 0  # tokens: micro-batches drawn
    cpu_bf16: bool | None = None  # computing in bf16 on CPU: decided at the run's first start
    steps: int | None = None  # the steps re-planned to end by RunSpec.deadline (None: not yet)


def _batches(shard, spec: RunSpec, state: TrainState, device, every: int = 1, offset: int = 0):
    """Endless micro-batches from this rank's shard, advancing state.epoch / batch_in_epoch: of
    each round of `every` batches of the shard, the one numbered `offset` (tensor parallelism:
    every rank reads the whole dataset, and the ranks of one tensor-parallel group take the same
    batches). After a restart the already-consumed batches of the current epoch are skipped."""
    bs = spec.train.batch_size
    while True:
        it = shard.iter_torch_batches(batch_size=bs, drop_last=True, device=device,
                                      dtypes=torch.long, local_shuffle_buffer_size=4 * bs,
                                      local_shuffle_seed=spec.train.seed + state.epoch)
        seen, mine = 0, None
        for batch in it:
            seen += 1
            if seen <= state.batch_in_epoch:
                continue
            if (seen - 1) % every == offset:
                mine = batch
            if seen % every == 0:  # a whole round: every group has its batch (none gets a spare)
                state.batch_in_epoch = seen
                yield D.shift(mine["tokens"], mine.get("mask"), mine.get("segments"))
        if seen < every:
            raise ValueError(f"a worker's data shard holds less than {every} batches of {bs} rows")
        state.epoch += 1
        state.batch_in_epoch = 0


def _mixed_batches(streams: dict[str, TS.SourceStream], spec: RunSpec, state: TrainState,
                   device):
    """Endless micro-batches whose rows come from the sources in the proportions of
    spec.mixture: which source each row comes from is drawn from a generator seeded by (seed,
    micro-batch number), the same on every rank; each rank reads its own windows of each source
    (token_stream), from the positions its streams were given."""
    names = sorted(streams)
    p = np.array([spec.mixture[n] for n in names], dtype=np.float64)
    rows = {n: iter(streams[n]) for n in names}
    while True:
        picks = np.random.default_rng([spec.train.seed, state.draws]).choice(
            len(names), size=spec.train.batch_size, p=p / p.sum())
        state.draws += 1
        batch = np.stack([next(rows[names[i]]) for i in picks])
        yield D.shift(torch.from_numpy(batch).to(device, torch.long), None, None)


def _token_streams(spec: RunSpec, state: TrainState, rank: int, world: int
                   ) -> dict[str, TS.SourceStream]:
    """This rank's stream of each source, at its saved position when resuming (the last window
    of each source is held out when the run evaluates)."""
    streams = {}
    for name in spec.mixture:
        stream = TS.SourceStream(spec.tokens, name, spec.train.seq_len, rank, world,
                                 spec.train.seed, exclude=1 if spec.eval_every else 0)
        saved = state.sources.get(name)
        if saved:
            if len(saved) != world:
                raise ValueError(f"the checkpoint holds data positions for {len(saved)} workers; "
                                 f"resume a tokenised corpus with as many, not {world}")
            stream.position = list(saved[rank])
        streams[name] = stream
    return streams


def _token_eval_batches(spec: RunSpec, device) -> list[dict]:
    """The evaluation batches of a tokenised corpus: rows of each source's held-out window in
    the mixture's proportions, the same on every rank."""
    n = spec.eval_batches * spec.train.batch_size
    total = sum(spec.mixture.values())
    rows = np.concatenate([TS.held_out_rows(spec.tokens, name, spec.train.seq_len,
                                            max(1, round(n * w / total)))
                           for name, w in sorted(spec.mixture.items())])
    tokens = torch.from_numpy(rows).to(device, torch.long)
    return [{"tokens": t} for t in tokens.split(spec.train.batch_size)]


@torch.no_grad()
def _eval_loss(model, batches, spec: RunSpec, device) -> float | None:
    """Mean loss over the first spec.eval_batches of `batches`, averaged over the ranks."""
    model.eval()
    total, n = torch.zeros((), device=device), torch.zeros((), device=device)
    # every rank runs the same number of (possibly partial) batches: equal shards, or the same rows
    for i, batch in enumerate(batches):
        if i == spec.eval_batches:
            break
        inputs, targets, mask, segments = D.shift(batch["tokens"], batch.get("mask"),
                                                  batch.get("segments"))
        total += lm_loss(model(inputs, segments=segments), targets, mask)
        n += 1
    model.train()
    dist.all_reduce(total)
    dist.all_reduce(n)
    return float(total / n) if n > 0 else None


def _compute_in_bf16(spec: RunSpec, state: TrainState, device) -> bool:
    """Whether the steps compute in bf16 on CPU. Decided once, at the run's first start, where
    every rank's CPU finds it pays (each times its own), and kept in the train state: a rank that
    timed its CPU while it was busy must not compute differently from the others, and a resumed
    run computes as the run it continues, so its loss curve is the uninterrupted one."""
    if state.cpu_bf16 is None:
        pays = torch.tensor(int(spec.parallel.cpu_bf16 and cpu_bf16_pays(device)), device=device)
        dist.all_reduce(pays, op=dist.ReduceOp.MIN)
        state.cpu_bf16 = bool(pays)
    return state.cpu_bf16


def _save_checkpoint(model, opt, spec: RunSpec, state: TrainState, rank: int, metrics: dict,
                     upload_async: bool) -> None:
    """Write this rank's DCP shard to a local directory and report it. Uploaded synchronously,
    training waits until Ray has registered it; uploaded asynchronously, training goes on at once
    and only the previous upload is waited for (so one checkpoint is always registered: a crash
    right after this report resumes from the previous one, never from scratch)."""
    from ray.train import CheckpointUploadMode
    model_sd, optim_sd = get_state_dict(model, opt)
    d = tempfile.mkdtemp(prefix="lamda-checkpoint-")  # removed by Ray once uploaded
    try:
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=d)
        if rank == 0:
            spec.model.save(Path(d) / CONFIG)
            spec.tokenizer.save(Path(d) / TOKENIZER)
            (Path(d) / TRAIN_STATE).write_text(json.dumps(dataclasses.asdict(state)))
    except BaseException:
        shutil.rmtree(d, ignore_errors=True)
        raise
    if upload_async:
        ray.train.get_all_reported_checkpoints()  # the previous upload, registered
    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d),
                     checkpoint_upload_mode=CheckpointUploadMode.ASYNC if upload_async
                     else CheckpointUploadMode.SYNC, delete_local_checkpoint_after_upload=True)
    if not upload_async:
        ray.train.get_all_reported_checkpoints()  # registered before training goes on


@contextmanager
def _local_checkpoint_dir(ckpt):
    """The checkpoint as a local directory. A remote one is downloaded once per node by the
    node's local rank 0 while the others wait at a barrier (Ray's own shared `as_directory` lets a
    second worker re-download into the directory another one is reading)."""
    if isinstance(ckpt.filesystem, pyarrow.fs.LocalFileSystem):
        yield ckpt.path
        return
    key = hashlib.sha1(ckpt.path.encode()).hexdigest()[:16]
    d = Path(tempfile.gettempdir()) / f"lamda-resume-{key}"
    first = ray.train.get_context().get_local_rank() == 0
    if first:
        shutil.rmtree(d, ignore_errors=True)
        ckpt.to_directory(str(d))
    dist.barrier()
    try:
        yield str(d)
    finally:
        dist.barrier()
        if first:
            shutil.rmtree(d, ignore_errors=True)


def _load_checkpoint(ckpt, model, opt) -> TrainState:
    with _local_checkpoint_dir(ckpt) as d:
        check_checkpoint_dir(d)
        model_sd, optim_sd = get_state_dict(model, opt)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=d)
        set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
        return TrainState(**json.loads((Path(d) / TRAIN_STATE).read_text()))


class _Metrics:
    """Ray metrics (Prometheus, via Ray's metrics port), set by rank 0."""

    def __init__(self, run: str, stage: str):
        from ray.util.metrics import Counter, Gauge
        tags = {"run": run, "stage": stage}
        keys = tuple(tags)
        self.loss = Gauge("lamda_train_loss", "training loss", tag_keys=keys)
        self.eval_loss = Gauge("lamda_train_eval_loss", "evaluation loss", tag_keys=keys)
        self.tps = Gauge("lamda_train_tokens_per_second", "training tokens per second", tag_keys=keys)
        self.mfu = Gauge("lamda_train_mfu", "model FLOPs utilisation", tag_keys=keys)
        self.step = Gauge("lamda_train_step", "optimizer step", tag_keys=keys)
        self.tokens = Counter("lamda_train_tokens", "tokens trained on", tag_keys=keys)
        self.skipped = Counter("lamda_train_skipped_steps", "steps skipped for a non-finite loss "
                               "or gradient norm", tag_keys=keys)
        self.energy = Counter("lamda_train_energy_kwh", "energy used by training (kWh)", tag_keys=keys)
        for m in (self.loss, self.eval_loss, self.tps, self.mfu, self.step, self.tokens, self.energy,
                  self.skipped):
            m.set_default_tags(tags)


def _shard_sizes(model, device, world: int) -> list[int]:
    """Parameters held by each rank (their local shards)."""
    local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel()
                for p in model.parameters())
    sizes = [torch.zeros((), dtype=torch.long, device=device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor(local, device=device))
    return [int(s) for s in sizes]


def train_worker(config: dict) -> None:
    """The Ray Train loop run by every worker."""
    spec: RunSpec = config["spec"]
    reports = config.get("reports")  # a _Reports actor, or None
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for float32 matmuls (the torch band gradient)
    tc = spec.train

    model = build_model(spec.model, device="meta")
    mesh = parallelize(model, spec.parallel, device.type, world)
    model.to_empty(device=device)
    init_weights(model, mesh, tc.seed)
    opt = build_optimizer(model, tc)

    state = TrainState()
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        state = _load_checkpoint(ckpt, model, opt)
        state.restarts.append(state.step)
        if rank == 0:
            log.info(f"[{spec.stage}] resuming at step {state.step} (epoch {state.epoch}, "
                     f"batch {state.batch_in_epoch})")
    elif spec.init_from:
        full, _ = load_export(spec.init_from)
        set_model_state_dict(model, full.state_dict(),
                             options=StateDictOptions(full_state_dict=True))
        del full

    hw = hardware(torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
    peak = spec.peak_flops or (hw.peak_flops if device.type == "cuda" else None)
    watts = spec.watts or hw.watts
    meter = EnergyMeter(watts)
    shard_sizes = _shard_sizes(model, device, world)
    metrics = _Metrics(ctx.get_experiment_name(), spec.stage) if rank == 0 else None
    tp = spec.parallel.tp
    dp = world // tp  # data-parallel groups: each trains on its own batches
    streams, eval_batches = {}, None
    if spec.tokens:
        if tp > 1:
            raise ValueError("tensor parallelism reads a single dataset; a tokenised corpus's "
                             "mixture needs --tp 1 for now")
        streams = _token_streams(spec, state, rank, world)
        batches = _mixed_batches(streams, spec, state, device)
        eval_batches = _token_eval_batches(spec, device) if spec.eval_every else None
    else:
        batches = _batches(ray.train.get_dataset_shard("train"), spec, state, device, *(
            (dp, rank // tp) if tp > 1 else ()))
        if spec.eval_every:
            eval_batches = ray.train.get_dataset_shard("eval")
    flops_per_token = spec.model.flops_per_token(tc.seq_len)

    loss_fn = torch.compile(lm_loss) if spec.parallel.compile else lm_loss
    resumed = state.cpu_bf16 is not None
    bf16 = _compute_in_bf16(spec, state, device)
    if rank == 0 and bf16:
        log.info(f"[{spec.stage}] computing in bf16 on CPU " + (
            "(as the run it resumes did)" if resumed else
            f"(its bf16 matrix products are {cpu_bf16_speedup():.1f}x as fast)"))
    t_last, tokens_last = time.perf_counter(), state.tokens
    energy_base, in_a_row, saved = state.energy_kwh, 0, state.step
    # the learning-rate schedule ends at the planned steps; its warm-up stays as first planned
    schedule = dataclasses.replace(tc, steps=state.steps or tc.steps, warmup_steps=warmup_steps(tc))
    # (step, time) at this run's first log step, after the first checkpoint where one comes within
    # the re-plan's steps: the re-plan's rate is timed from it. Steps after a checkpoint ran
    # slower than those before: on the 2-core machine 0.78 s against 0.61 after a DCP save in one
    # process, 0.83-0.87 s against 0.65 in make run's fine-tuning (bench/RESULTS.md, "One worker
    # with both CPUs"; the cause was not found)
    timed, time_after_save = None, spec.checkpoint_every <= spec.budget.replan_after
    while state.step < schedule.steps:
        stats = train_step(model, opt, (next(batches) for _ in range(tc.grad_accum)), state.step,
                           schedule, loss_fn, bf16)
        state.step += 1
        state.tokens += stats["tokens"] * dp
        in_a_row = in_a_row + 1 if stats["skipped"] else 0
        if stats["skipped"]:
            state.skipped += 1
            if rank == 0:
                metrics.skipped.inc()
                log.warning(f"[{spec.stage}] step {state.step}: loss {stats['loss']} / gradient "
                            f"norm {stats['grad_norm']} not finite; the step is skipped "
                            f"({in_a_row} in a row, {state.skipped} in all)")
            if in_a_row == tc.max_nonfinite_steps:  # every rank sees the same: all stop here
                raise NonFiniteTraining(
                    f"training stopped at step {state.step}: {in_a_row} steps in a row had a "
                    f"non-finite loss or gradient norm (skipped, the weights unchanged; "
                    f"{state.skipped} skipped in all). The last checkpoint is intact: "
                    + (f"step {saved}." if saved else "none was written.")
                    + " Lower the learning rate, check the data or resume from an earlier checkpoint.")
        if spec.after_step is not None:
            spec.after_step(state.step, rank, world)

        last = state.step == schedule.steps
        do_ckpt = last or state.step % spec.checkpoint_every == 0
        do_eval = eval_batches is not None and (last or state.step % spec.eval_every == 0)
        if not (do_ckpt or do_eval or state.step % tc.log_every == 0):
            continue
        if spec.deadline is not None and state.steps is None and (saved or not time_after_save):
            timed = timed or (state.step, time.perf_counter())  # saved by this step's checkpoint
            if state.step - timed[0] >= spec.budget.replan_after:
                step_s = (time.perf_counter() - timed[1]) / (state.step - timed[0])
                state.steps = _replan(spec, state.step, step_s, tc.steps, rank)
                schedule = dataclasses.replace(schedule, steps=state.steps)
        loss = torch.tensor(stats["loss"], device=device)
        dist.all_reduce(loss)
        energy = torch.tensor(meter.kwh(), device=device, dtype=torch.float64)
        dist.all_reduce(energy)
        state.energy_kwh = energy_base + float(energy)
        now = time.perf_counter()
        tps = (state.tokens - tokens_last) / (now - t_last)
        m = {"step": state.step, "steps": schedule.steps, "loss": float(loss) / world,
             "lr": stats["lr"], "grad_norm": stats["grad_norm"], "tokens": state.tokens,
             "tokens_per_s": tps, "energy_kwh": state.energy_kwh, "epoch": state.epoch,
             "restarts": list(state.restarts),
             "skipped": state.skipped, "checkpoint_s": state.checkpoint_s,
             "sources": {k: s.position for k, s in streams.items()},  # this rank's
             "param_shards": shard_sizes}
        if peak:
            m["mfu"] = mfu(flops_per_token * tps, 1.0, world, peak)
        if do_eval:
            m["eval_loss"] = _eval_loss(model, eval_batches if spec.tokens else
                                        eval_batches.iter_torch_batches(
                                            batch_size=tc.batch_size, device=device,
                                            dtypes=torch.long), spec, device)
        if rank == 0:
            metrics.loss.set(m["loss"])
            metrics.tps.set(tps)
            metrics.step.set(state.step)
            metrics.tokens.inc(state.tokens - tokens_last)
            metrics.energy.inc(float(energy))
            if m.get("eval_loss") is not None:
                metrics.eval_loss.set(m["eval_loss"])
            if "mfu" in m:
                metrics.mfu.set(m["mfu"])
            log.info(f"[{spec.stage}] step {state.step}/{schedule.steps}  loss {m['loss']:.4f}"
                     + (f"  eval {m['eval_loss']:.4f}" if m.get("eval_loss") is not None else "")
                     + f"  {tps:,.0f} tok/s" + (f"  MFU {m['mfu']:.1%}" if "mfu" in m else "")
                     + f"  {state.energy_kwh * 1000:.3f} Wh")
            if reports is not None:
                ray.get(reports.put.remote(m))
        if do_ckpt:
            if streams:  # every rank's data position, into rank 0's train state
                for name, stream in streams.items():
                    state.sources[name] = [None] * world
                    dist.all_gather_object(state.sources[name], stream.position)
            t0 = time.perf_counter()
            _save_checkpoint(model, opt, spec, state, rank, m, spec.async_checkpoint and saved > 0)
            state.checkpoint_s += time.perf_counter() - t0
            saved = state.step
        else:
            ray.train.report(m)
        t_last, tokens_last = time.perf_counter(), state.tokens
        energy_base, meter = state.energy_kwh, EnergyMeter(watts)

    ray.train.get_all_reported_checkpoints()  # the last upload, registered
    if spec.export_to:
        save_sharded_export(spec.export_to, model, spec.model, spec.tokenizer, spec.export_shard_bytes,
                            extra={"stage": spec.stage, "step": state.step, "tokens": state.tokens})
        if rank == 0:
            log.info(f"[{spec.stage}] exported to {spec.export_to}")


def _replan(spec: RunSpec, step: int, step_s: float, most: int, rank: int) -> int:
    """The steps that end by spec.deadline at rank 0's rate of `step_s` seconds a step (every
    rank gets rank 0's figure)."""
    steps = [steps_within(spec.budget, spec.deadline - time.time(), step, step_s, most)]
    dist.broadcast_object_list(steps, src=0)
    if rank == 0:
        log.info(f"[{spec.stage}] {steps[0]} steps end by the deadline at {step_s:.2f} s a step "
                 f"(re-planned at step {step}; at most {most})")
    return steps[0]


# -- the trainer --------------------------------------------------------------------------------

@ray.remote(num_cpus=0)
class _Reports:
    """Rank 0's metrics on their way to the driver."""

    def __init__(self):
        self.items = []

    def put(self, metrics: dict) -> None:
        self.items.append(metrics)

    def take(self) -> list[dict]:
        items, self.items = self.items, []
        return items


def _forward_reports(reports, on_report, stop: threading.Event) -> None:
    """Driver thread: pass the reported metrics to `on_report` until `stop`, then the rest."""
    while True:
        stopping = stop.wait(0.5)
        for m in ray.get(reports.take.remote()):
            on_report(m)
        if stopping:
            return


class _Trainer(ray.train.torch.TorchTrainer):
    """TorchTrainer whose Ctrl-C aborts the run and raises KeyboardInterrupt.

    Ray Train's own SIGINT handler aborts the run and then calls sys.exit. fit() installs it and
    never removes it: afterwards it ignores Ctrl-C twice (the run is over) and exits on the third,
    so a job that trains, then serves, cannot be stopped. fit() below puts the previous handler
    back."""

    def _register_sigint_handler(self, controller):
        previous = signal.getsignal(signal.SIGINT)

        def abort(signum, frame):
            signal.signal(signal.SIGINT, previous)  # a second Ctrl-C interrupts at once
            try:
                ray.get(controller.abort.remote(), timeout=10)  # stops the workers
            except ray.exceptions.RayError:  # the controller exits as it aborts
                pass
            raise KeyboardInterrupt

        signal.signal(signal.SIGINT, abort)


def _ordered_data(split: bool = True):
    """Ray Data as the workers read it, in a fixed order: blocks in dataset order, not in the
    order their tasks finish, and split among the workers by that order alone. So the rows a
    worker gets, and their order, depend only on the dataset, the seed and the epoch: a resumed
    worker that skips the batches it had consumed is where it was (`_batches`). Unsplit (tensor
    parallelism), every worker reads every row and `_batches` picks its group's."""
    from ray.train import DataConfig
    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return DataConfig(datasets_to_split="all" if split else [], execution_options=options)


def fit(spec: RunSpec, cluster: ClusterSpec, train_ds: ray.data.Dataset | None = None,
        eval_ds: ray.data.Dataset | None = None, on_report=None):
    """Run the worker loop on `cluster.workers` workers; returns Ray Train's Result. The rows:
    `train_ds` (and `eval_ds`), or with spec.tokens a tokenised corpus whose sources each worker
    reads itself, mixed as spec.mixture says (its evaluation rows held out of it).

    `on_report(metrics)`, if given, is called in a driver thread with rank 0's metrics every log
    interval. Ctrl-C aborts the run (its checkpoints stay: a re-run resumes) and raises
    KeyboardInterrupt."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig

    use_gpu = cluster.gpus_per_worker > 0
    resources = {"CPU": cluster.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = cluster.gpus_per_worker
    if spec.tokens:
        sources = token_sources(spec.tokens, spec.tokenizer)  # lamda.ray_data
        if train_ds is not None or not spec.mixture or not set(spec.mixture) <= set(sources):
            raise ValueError(f"a tokenised corpus needs mixture weights for some of its sources "
                             f"{sources} (not {spec.mixture}) and no train dataset")
        datasets = {}
    else:
        datasets = {"train": train_ds}
        if eval_ds is not None and spec.eval_every:
            datasets["eval"] = eval_ds
        else:
            spec = dataclasses.replace(spec, eval_every=0)
    reports = _Reports.remote() if on_report else None
    trainer = _Trainer(
        train_worker,
        train_loop_config={"spec": spec, "reports": reports},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cluster.workers, use_gpu=use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=cluster.run_name, storage_path=storage_uri(cluster.storage_path),
            failure_config=FailureConfig(max_failures=cluster.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cluster.keep_checkpoints),
            logging_config=LoggingConfig(log_level=cluster.log_level)),
        datasets=datasets,
        dataset_config=_ordered_data(split=spec.parallel.tp == 1),
    )
    previous = signal.getsignal(signal.SIGINT)
    stop = threading.Event()
    forward = threading.Thread(target=_forward_reports, args=(reports, on_report, stop),
                               daemon=True) if reports else None
    if forward:
        forward.start()
    try:
        return trainer.fit()
    except ray.train.TrainingFailedError as e:
        stopped = [f for f in getattr(e, "worker_failures", {}).values()
                   if isinstance(f, NonFiniteTraining)]
        if stopped:  # the workers' own error, not Ray's wrapping of it
            raise stopped[0] from e
        raise
    finally:
        if forward:
            stop.set()
            forward.join(timeout=10)
            ray.kill(reports)
        if previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, previous)
