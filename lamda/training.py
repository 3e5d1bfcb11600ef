"""The pieces of a training loop, used by the Ray Train worker loop and the benchmarks:
optimizer, learning-rate schedule, one optimizer step with gradient accumulation, and whether
bfloat16 compute pays on this CPU."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from lamda.model import LaMDA, lm_loss


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation: steps, batch, learning-rate schedule, AdamW."""

    steps: int = 100  # optimizer steps
    batch_size: int = 8  # sequences per micro-batch (per worker)
    seq_len: int = 256  # tokens per sequence
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int | None = None  # linear warm-up (None: a tenth of the steps, at least 1)
    weight_decay: float = 0.1  # AdamW, on matrices only
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW's moment decay rates
    grad_clip: float = 1.0  # max global gradient norm (0: off)
    bias_lr_scale: float = 100.0  # learning-rate multiplier of the relative-bias table (build_optimizer)
    dialog_fraction: float = 0.5  # share of dialog tokens in pre-training (paper: 50%)
    log_every: int = 10  # steps between log lines
    max_nonfinite_steps: int = 5  # consecutive skipped (non-finite) steps before the run stops
    seed: int = 0  # initial weights, data order, evaluation split


@dataclass(frozen=True)
class StepBudget:
    """A time limit on the steps: after `replan_after` steps the run re-plans them once from its
    own rate, so that they end within `minutes` of the job's start (TrainConfig.steps stays the
    most). The re-planned steps are saved with the checkpoints: a resumed run keeps them."""

    minutes: float = 0.0  # the time the job's steps may take, start-up included (0: no limit)
    replan_after: int = 50  # steps of this run timed before the re-plan (checkpoints and
    #                         evaluations among them)
    min_steps: int = 1  # steps however slow the rate
    reserve_steps: int = 0  # the time of this many steps is left after the last (for the work
    #                         that follows in a pipeline)

    def deadline(self) -> float | None:
        """The Unix time the steps end by, counted from now (the job's start); None: no limit."""
        return time.time() + self.minutes * 60 if self.minutes else None


def steps_within(budget: StepBudget, left_s: float, step: int, step_s: float, most: int) -> int:
    """The steps of a run `step` steps in, at `step_s` seconds a step, with `left_s` seconds
    left: those that fit, less budget.reserve_steps; at most `most`, at least budget.min_steps and
    one more than `step` (the last step checkpoints)."""
    fit = step + int(left_s / step_s) - budget.reserve_steps
    return min(most, max(budget.min_steps, step + 1, fit))


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on weight matrices, none on norms, embeddings and the bias table.

    The relative-bias table gets `cfg.bias_lr_scale` times the learning rate. Its entries are
    single scalars that attention patterns hinge on: a head that attends to the previous token
    (half of an induction head, which copying needs) wants a bias of several units at distance 1,
    and Adam moves a parameter by about one learning rate per step, so at the base rate that takes
    thousands of steps. Measured on a copy task with the `tiny` preset: no copying after 400
    steps at the base rate; with the scaled rate see bench/RESULTS.md.
    """
    decay, no_decay, bias = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if "rel_bias" in name:
            bias.append(p)
        elif p.ndim >= 2 and "embed" not in name:
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0},
              {"params": bias, "weight_decay": 0.0, "lr_scale": cfg.bias_lr_scale}]
    # One fused kernel per step on plain CUDA tensors; FSDP2's DTensors keep the default (foreach).
    fused = all(p.is_cuda and type(p) is torch.nn.Parameter for p in decay + no_decay + bias)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=fused or None)


def warmup_steps(cfg: TrainConfig) -> int:
    """cfg.warmup_steps, or a tenth of the steps (at least 1)."""
    return cfg.warmup_steps if cfg.warmup_steps is not None else max(1, cfg.steps // 10)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.lr * cfg.min_lr_ratio at cfg.steps."""
    warmup = warmup_steps(cfg)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, cfg.steps - warmup))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


BF16_MIN_SPEEDUP = 1.5  # compute in bf16 on a CPU only where its matrix products are this much faster


@functools.cache
def cpu_bf16_speedup() -> float:
    """How many times faster this CPU multiplies bfloat16 matrices than float32 ones, timed once
    per process on a product of a training step's shape (the fastest of 9 tries each, so that a
    core busy with other work times it as an idle one). CPUs with bf16 dot-product instructions
    (AVX512-BF16, AMX) run them several times faster; others emulate them, more slowly."""
    def best(a: Tensor, b: Tensor) -> float:  # the fastest of 9 (the first warms up)
        times = []
        for _ in range(10):
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
        return min(times[1:])
    a, b = torch.randn(1024, 256), torch.randn(256, 1024)
    return best(a, b) / best(a.bfloat16(), b.bfloat16())


def cpu_bf16_pays(device: torch.device | str = "cpu") -> bool:
    """Whether to compute in bfloat16 (autocast) on `device`: a CPU where cpu_bf16_speedup >=
    BF16_MIN_SPEEDUP (GPUs keep their own dtype choice)."""
    return torch.device(device).type == "cpu" and cpu_bf16_speedup() >= BF16_MIN_SPEEDUP


def train_step(model: LaMDA, opt: torch.optim.Optimizer, micro_batches: Iterable[tuple[Tensor, ...]],
               step: int, cfg: TrainConfig, loss_fn=lm_loss, bf16: bool = False) -> dict:
    """One optimizer step over `cfg.grad_accum` micro-batches of (inputs, targets, loss_mask,
    segments), the last two None where every target counts or rows are not packed (lamda.data.shift).

    `loss_fn(logits, targets, mask)` defaults to `lm_loss`; a compiled `lm_loss` saves the
    float32 copies of the logits on GPU. With a 0/1 loss mask the output layer runs only where
    the mask is set (the same mean loss, less work where most tokens are context).

    A step whose loss or gradient norm is not finite (on any rank) changes nothing: no update,
    gradients dropped, and `skipped` is True; the optimizer state stays as it was.

    With `bf16`, the forward pass runs under bfloat16 autocast (matrix products in bf16; weights,
    gradients, the loss and AdamW stay float32): for CPUs where that pays (cpu_bf16_pays).

    Returns the mean loss, the gradient norm before clipping, the learning rate, the token count
    and whether the step was skipped.
    """
    lr = lr_at(step, cfg)
    for group in opt.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    model.train()
    total_loss, tokens = 0.0, 0
    for batch in micro_batches:
        inputs, targets, mask, segments = batch
        with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=bf16):
            if mask is None:
                loss = loss_fn(model(inputs, segments=segments), targets)
            else:
                keep = rounded_selection(mask > 0)
                loss = loss_fn(model(inputs, segments=segments, only=keep), targets[keep], mask[keep])
        loss = loss.float() / cfg.grad_accum
        loss.backward()
        total_loss += loss.item()
        tokens += inputs.numel()
    params = [p for p in model.parameters() if p.grad is not None]
    grad_norm = total_grad_norm([p.grad for p in params])
    if cfg.grad_clip:
        torch.nn.utils.clip_grads_with_norm_(params, cfg.grad_clip, grad_norm, foreach=False)
    skipped = not all_finite(total_loss, float(grad_norm))
    if not skipped:
        opt.step()
    opt.zero_grad(set_to_none=True)
    return {"loss": total_loss, "grad_norm": float(grad_norm), "lr": lr, "tokens": tokens,
            "skipped": skipped}


SELECTION_MULTIPLE = 128  # the output layer's positions per step come in multiples of this


def rounded_selection(keep: Tensor, multiple: int = SELECTION_MULTIPLE) -> Tensor:
    """`keep` (B, T) with as many of the first positions it leaves out added as round its count up
    to a multiple of `multiple` (or to all positions). The loss mask leaves the added ones out; the
    output layer then sees a few shapes instead of a new one at nearly every step, and each new
    shape costs the CPU's bf16 kernels (oneDNN) a kernel plan kept in memory: without rounding a
    fine-tuning worker grew by gigabytes in a few hundred steps (bench/RESULTS.md)."""
    n = int(keep.sum())
    extra = min(-n % multiple, keep.numel() - n)
    if not extra:
        return keep
    flat = keep.flatten().clone()  # (B * T,) in row order, the order x[keep] takes positions in
    flat[(~flat).nonzero()[:extra, 0]] = True
    return flat.view_as(keep)


def total_grad_norm(grads: list[Tensor]) -> Tensor:
    """The L2 norm of all gradients together. DTensor gradients (FSDP2, tensor parallelism) are
    reduced per device mesh: with tensor parallelism the blocks' live on the 2-D (dp, tp) mesh
    and the others' on dp alone, and one reduction cannot mix meshes."""
    by_mesh: dict = {}
    for g in grads:
        by_mesh.setdefault(getattr(g, "device_mesh", None), []).append(g)
    norms = []
    for group in by_mesh.values():
        norm = torch.nn.utils.get_total_norm(group)
        norms.append(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.tensor(0.0)


def all_finite(*values: float) -> bool:
    """Whether every value is finite on every rank (one all-reduce when distributed)."""
    finite = all(math.isfinite(v) for v in values)
    if dist.is_available() and dist.is_initialized():
        flag = torch.tensor(float(finite), device="cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        finite = bool(flag.item())
    return finite
