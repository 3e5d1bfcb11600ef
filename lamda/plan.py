"""Sizing planner: memory per device, step time, days, energy and carbon of a training run.

    python -m lamda.plan --preset 2b --gpus 1 --gpu h200 --batch-size 16 --seq-len 1024
    python -m lamda.plan --preset 137b --gpus 1024 --gpu h100 --tp 8 --tokens 2.81e12
    python -m lamda.plan --preset 137b --gpus 1024 --gpu tpu-v3 --tokens 2.81e12 --mfu 0.565 --json

Layout: FSDP2 (ZeRO-3: parameters, gradients and optimizer state sharded over the data-parallel
group of gpus / tp ranks) composed with Megatron-style tensor parallelism of degree tp inside a
node, as lamda.parallel applies it: heads and FFN split over tp; the residual stream, the norms
and the tied embedding (so the logits) whole on every rank of a group. FLOPs per
token, energy and carbon come from lamda.config and lamda.accounting; bench/RESULTS.md compares
the figures here with measured ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass

from lamda.accounting import (HARDWARE, SECONDS_PER_DAY, carbon_tco2e, energy_kwh, hardware,
                              training_flops)
from lamda.config import PRESETS, ModelConfig

GIB = 2**30


@dataclass(frozen=True)
class Precision:
    """Bytes per parameter of each persistent state, and per activation element."""

    params: int
    grads: int
    optimizer: int  # AdamW: two moments
    reduce: int  # gradient reduce-scatter element (FSDP)
    activations: int = 2  # the compute dtype: activations and gathered parameters


PRECISIONS: dict[str, Precision] = {
    # bf16 parameters, gradients and AdamW moments: what bench/train_step.py runs on GPU (8 B/param)
    "bf16": Precision(params=2, grads=2, optimizer=4, reduce=2),
    # bf16 compute copy + fp32 master, bf16 gradients, fp32 moments (16 B/param). FSDP2's
    # MixedPrecisionPolicy (lamda.parallel) holds the same 16 bytes as fp32 shards, fp32 gradients
    # and transient bf16 copies, and reduces in fp32.
    "fp32-master": Precision(params=6, grads=2, optimizer=8, reduce=4),
    # everything in fp32: the CPU runs
    "fp32": Precision(params=4, grads=4, optimizer=8, reduce=4, activations=4),
}


@dataclass(frozen=True)
class Device:
    """What the planner needs beyond lamda.accounting.Hardware (peak FLOP/s, watts)."""

    memory_gib: float  # memory per device the framework can address
    node: int  # devices on the fast interconnect (a tensor-parallel group stays inside one)
    intra_gbs: float  # GB/s per device per direction inside a node
    inter_gbs: float  # GB/s per device per direction between nodes
    mfu: float  # default model FLOPs utilisation


# Memory: vendors write "80GB" / "141GB" for what nvidia-smi reports as 81,559 MiB (H100 SXM),
# 143,771 MiB (H200) and 81,920 MiB (A100 80GB), so these are GiB-sized (an H200's 141 GB is
# 140.4 GiB, not 141e9 bytes = 131 GiB). TPU v3: 32 GiB HBM per chip (two cores of 16 GiB; Cloud
# TPU v3 documentation). Bandwidth, nominal: NVLink 4 (H100/H200 SXM) 900 GB/s per GPU both
# directions, NVLink 3 (A100) 600 GB/s; InfiniBand NDR 400 Gb/s (H100/H200) and HDR 200 Gb/s
# (A100) per GPU, one NIC per GPU as in DGX systems; TPU v3 ICI 656 Gb/s per link (Jouppi et al.,
# "A Domain-Specific Supercomputer for Training Deep Neural Networks", CACM 2020), the whole
# 1,024-chip pod on ICI. MFU: 56.2% measured for `2b` on one H200 (bench/RESULTS.md; the H100's
# 53.5% predates the last flex settings, A100 not measured: 56.2% assumed for both); 56.5% the
# paper's 137B run (§10), which counts the FLOPs executed; CPU: `tiny` (4 x 256 then) at
# 4,275 tokens/s on 2 cores (bench/RESULTS.md) against accounting's nominal 1 TFLOP/s. The CPU
# row is nominal: one 16 GiB machine, gloo over shared memory and 10 Gb Ethernet.
DEVICES: dict[str, Device] = {
    "h100": Device(memory_gib=79.6, node=8, intra_gbs=450.0, inter_gbs=50.0, mfu=0.562),
    "h200": Device(memory_gib=140.4, node=8, intra_gbs=450.0, inter_gbs=50.0, mfu=0.562),
    "a100": Device(memory_gib=80.0, node=8, intra_gbs=300.0, inter_gbs=25.0, mfu=0.562),
    "tpu-v3": Device(memory_gib=32.0, node=1024, intra_gbs=80.0, inter_gbs=80.0, mfu=0.565),
    "cpu": Device(memory_gib=16.0, node=1, intra_gbs=10.0, inter_gbs=1.25, mfu=0.121),
}
# Share of device memory a plan may use: the CUDA context, the caching allocator's fragmentation
# and workspaces take the rest (max_memory_allocated, which the figures here model, excludes them).
USABLE = 0.9
PAPER_BATCH_TOKENS = 262144  # paper §3: 256K tokens per batch
PAPER_PUE, PAPER_GRID = 1.10, 0.056  # paper §10 (also lamda.accounting's command-line defaults)
TP_DEGREES = (1, 2, 4, 8)


@dataclass(frozen=True)
class PlanInputs:
    preset: str = "2b"  # lamda.config preset
    gpus: int = 1  # devices in all (GPUs or TPU chips)
    gpu: str = "h200"  # device, a name lamda.accounting.hardware knows
    tokens: float = 0.0  # tokens to train on (for days, energy, carbon)
    tp: int = 1  # tensor-parallel degree, inside a node; data parallel = gpus / tp
    batch_size: int | None = None  # sequences per data-parallel rank per step (None: the paper's
    #                                256K tokens per step over all ranks, at least one sequence)
    seq_len: int | None = None  # tokens per sequence (None: the preset's max_seq_len)
    precision: str = "bf16"  # a PRECISIONS key
    activation_checkpointing: bool = False  # recompute each block in backward (lamda.parallel)
    mfu: float | None = None  # share of peak FLOP/s the step's FLOPs run at, end to end (None:
    #                           the device's default); with checkpointing the recomputed
    #                           forward counts too
    pue: float = PAPER_PUE  # data-centre power usage effectiveness
    grid: float = PAPER_GRID  # grid intensity, kgCO2e/kWh


def device_name(name: str) -> str:
    """The HARDWARE key lamda.accounting.hardware resolves `name` to ("NVIDIA H100" -> h100)."""
    hw = hardware(name)
    return next(key for key, known in HARDWARE.items() if known is hw)


def model(p: PlanInputs) -> ModelConfig:
    cfg = ModelConfig.from_name(p.preset)
    return cfg.replace(max_seq_len=p.seq_len) if p.seq_len else cfg


def data_parallel(p: PlanInputs) -> int:
    return p.gpus // p.tp


def batch_size(p: PlanInputs) -> int:
    """Sequences per data-parallel rank per step."""
    if p.batch_size:
        return p.batch_size
    return max(1, PAPER_BATCH_TOKENS // (model(p).max_seq_len * data_parallel(p)))


def check(p: PlanInputs) -> None:
    """ValueError for a layout the sharding model does not describe."""
    cfg, dev = model(p), DEVICES[device_name(p.gpu)]
    if p.precision not in PRECISIONS:
        raise ValueError(f"unknown precision {p.precision!r}; known: {', '.join(PRECISIONS)}")
    if p.tp < 1 or p.gpus < p.tp or p.gpus % p.tp:
        raise ValueError(f"--gpus ({p.gpus}) must be a multiple of --tp ({p.tp})")
    if p.tp > dev.node:
        raise ValueError(f"--tp {p.tp} exceeds the {dev.node} devices of a node")
    if cfg.n_head % p.tp or cfg.d_ff % p.tp:
        raise ValueError(f"--tp {p.tp} must divide the heads and d_ff")


# ---- memory ----------------------------------------------------------------------------------

def state_bytes(cfg: ModelConfig, prec: Precision, gpus: int, tp: int) -> dict[str, float]:
    """Parameters, gradients and optimizer state per device: FSDP shards them over the
    data-parallel ranks and tensor parallelism the blocks over tp, so each device holds 1 / gpus
    of the blocks and 1 / (gpus / tp) of the embedding."""
    embed = cfg.num_params(non_embedding=False) - cfg.num_params(non_embedding=True)
    n = cfg.num_params(non_embedding=True) / gpus + embed / (gpus // tp)
    return {"params": n * prec.params, "grads": n * prec.grads, "optimizer": n * prec.optimizer}


def layer_bytes_per_token(cfg: ModelConfig, tp: int, act: int) -> float:
    """Bytes one block saves for backward per token, as AOTAutograd's min-cut partition of the
    compiled block does (traced for this model, bench/RESULTS.md), with FlexAttention:
    - residual stream, replicated over tp: block input, attention-norm output, the residual after
      attention, FFN-norm output (4 d_model), plus two float32 RMSNorm scales;
    - split over tp: q, k, v and the attention output (4 H d_kv; FlexAttention keeps no T x T
      scores, its output has q's layout so the o projection reads it without a copy) with the
      float32 log-sum-exp per head, and wi_0 and wi_1 outputs and their gated product (3 d_ff)."""
    residual = 4 * cfg.d_model * act + 2 * 4
    split = (4 * cfg.d_attn + 3 * cfg.d_ff) * act + 4 * cfg.n_head
    return residual + split / tp


def head_bytes_per_token(cfg: ModelConfig, tp: int, act: int) -> float:
    """Bytes per token at the top of backward beyond the blocks' saved tensors: the final
    residual and its normed copy (2 d_model), then the larger of the loss backward (the logits,
    which the compiled loss keeps, and their gradient: 2 x vocab) and the last block's FFN
    backward (the logits' gradient, still referenced, plus the gradient of the FFN's hidden
    state and of wi_0's and wi_1's outputs: 3 d_ff). The logits are whole on every rank (the
    tied embedding is not split over tp); the FFN's part is split."""
    loss = 2 * cfg.vocab_size * act
    ffn = (cfg.vocab_size + 3 * cfg.d_ff / tp) * act
    return 2 * cfg.d_model * act + max(loss, ffn)


def activation_bytes(cfg: ModelConfig, tokens: int, tp: int, act: int,
                     checkpointing: bool) -> float:
    """Peak activation memory per device for `tokens` tokens per data-parallel rank. With
    activation checkpointing each block keeps only its input, and one block at a time is
    recomputed in full in backward."""
    layer = layer_bytes_per_token(cfg, tp, act)
    saved = cfg.d_model * act * cfg.n_layer + layer if checkpointing else layer * cfg.n_layer
    return tokens * (saved + head_bytes_per_token(cfg, tp, act))


def fsdp_buffer_bytes(cfg: ModelConfig, prec: Precision, tp: int, dp: int) -> float:
    """FSDP2's unsharded working set per device: two blocks' gathered parameters (the one
    running and the one prefetched), one block's unsharded gradient before its reduce-scatter,
    and the root (embedding) kept gathered after forward. None without data parallelism."""
    if dp == 1:
        return 0.0
    block = cfg.num_params(non_embedding=True) / cfg.n_layer / tp
    gathered = prec.activations
    return block * (2 * gathered + prec.reduce) + cfg.vocab_size * cfg.d_model * gathered


def memory(p: PlanInputs) -> dict[str, float]:
    """Bytes per device: the breakdown, activations with and without checkpointing, and the peak.

    Gradients appear in backward as activations are freed, and lamda.training.train_step drops
    them after the optimizer step (set_to_none), so the peak holds activations or gradients, not
    both: max(activations, gradients) on top of parameters, optimizer state and FSDP buffers."""
    cfg, prec = model(p), PRECISIONS[p.precision]
    tokens = batch_size(p) * cfg.max_seq_len
    out = state_bytes(cfg, prec, p.gpus, p.tp)
    out["activations"] = activation_bytes(cfg, tokens, p.tp, prec.activations, False)
    out["activations_checkpointed"] = activation_bytes(cfg, tokens, p.tp, prec.activations, True)
    out["fsdp_buffers"] = fsdp_buffer_bytes(cfg, prec, p.tp, data_parallel(p))
    act = out["activations_checkpointed" if p.activation_checkpointing else "activations"]
    out["peak"] = out["params"] + out["optimizer"] + out["fsdp_buffers"] + max(act, out["grads"])
    return out


def fits(p: PlanInputs) -> bool:
    return memory(p)["peak"] <= USABLE * DEVICES[device_name(p.gpu)].memory_gib * GIB


# ---- time ------------------------------------------------------------------------------------

def ring_bytes(kind: str, n: int, nbytes: float) -> float:
    """Bytes each of n ranks sends for a ring collective over `nbytes`: all-reduce 2(n-1)/n,
    all-gather and reduce-scatter (n-1)/n."""
    return (2 if kind == "all-reduce" else 1) * (n - 1) / n * nbytes


def comm(p: PlanInputs) -> dict[str, float]:
    """Bytes sent per device per step and their seconds on the interconnect.

    FSDP: parameters all-gathered in forward and again in backward (compute dtype), gradients
    reduce-scattered, over the data-parallel group (NVLink if it fits in a node, else the
    network). TP: two all-reduces of the (batch, seq, d_model) activations per block in forward
    and two in backward (a third pair when checkpointing recomputes the forward), over NVLink."""
    cfg, prec, dev = model(p), PRECISIONS[p.precision], DEVICES[device_name(p.gpu)]
    dp = data_parallel(p)
    embed = cfg.num_params(non_embedding=False) - cfg.num_params(non_embedding=True)
    shard = cfg.num_params(non_embedding=True) / p.tp + embed  # a tp rank's part, whole over dp
    fsdp = (2 * ring_bytes("all-gather", dp, shard * prec.activations)
            + ring_bytes("reduce-scatter", dp, shard * prec.reduce))
    per_layer = 6 if p.activation_checkpointing else 4
    x = batch_size(p) * cfg.max_seq_len * cfg.d_model * prec.activations
    tp = per_layer * cfg.n_layer * ring_bytes("all-reduce", p.tp, x)
    fsdp_gbs = dev.intra_gbs if p.gpus <= dev.node else dev.inter_gbs
    return {"fsdp_bytes": fsdp, "tp_bytes": tp,
            "fsdp_s": fsdp / (fsdp_gbs * 1e9), "tp_s": tp / (dev.intra_gbs * 1e9)}


def compute_seconds(p: PlanInputs) -> float:
    """One step's compute: the rank's tokens x FLOPs per token (PaLM convention) over tp devices
    at `mfu` of peak; checkpointing adds one forward (a third of the model FLOPs)."""
    cfg = model(p)
    name = device_name(p.gpu)
    mfu = p.mfu or DEVICES[name].mfu
    flops = training_flops(cfg, batch_size(p) * cfg.max_seq_len, cfg.max_seq_len)
    if p.activation_checkpointing:
        flops *= 4 / 3
    return flops / (p.tp * HARDWARE[name].peak_flops * mfu)


def step_seconds(p: PlanInputs) -> float:
    """max(compute, communication): `mfu` is an end-to-end figure (the measured ones include the
    communication they overlapped), so communication costs time only where it exceeds compute."""
    c = comm(p)
    return max(compute_seconds(p), c["fsdp_s"] + c["tp_s"])


# ---- the plan --------------------------------------------------------------------------------

def smallest_layout(p: PlanInputs) -> dict | None:
    """The fewest devices (powers of two up to p.gpus, then the lowest tp in 1, 2, 4, 8) that fit
    with the same per-rank batch, sequence length, precision and checkpointing."""
    batch = batch_size(p)
    for n in (2**i for i in range(p.gpus.bit_length())):
        for tp in TP_DEGREES:
            q = dataclasses.replace(p, gpus=n, tp=tp, batch_size=batch)
            try:
                check(q)
            except ValueError:
                continue
            if fits(q):
                return {"gpus": n, "tp": tp, "memory_gib_per_gpu": memory(q)["peak"] / GIB}
    return None


def plan(p: PlanInputs) -> dict:
    """Everything the command prints, as one JSON-ready dict."""
    check(p)
    cfg, name = model(p), device_name(p.gpu)
    hw, dev = HARDWARE[name], DEVICES[name]
    mem, c, step = memory(p), comm(p), step_seconds(p)
    tokens_per_step = batch_size(p) * cfg.max_seq_len * data_parallel(p)
    seconds = p.tokens / tokens_per_step * step
    kwh = energy_kwh(p.gpus, seconds, hw.watts, p.pue)
    return {
        "preset": p.preset, "params": cfg.num_params(non_embedding=False), "gpu": name,
        "gpus": p.gpus, "tp": p.tp, "dp": data_parallel(p), "precision": p.precision,
        "activation_checkpointing": p.activation_checkpointing, "batch_size": batch_size(p),
        "seq_len": cfg.max_seq_len, "tokens_per_step": tokens_per_step,
        "memory_gib_per_gpu": mem["peak"] / GIB,
        "memory_breakdown_gib": {k: v / GIB for k, v in mem.items() if k != "peak"},
        "device_memory_gib": dev.memory_gib, "fits": fits(p),
        "mfu": p.mfu or dev.mfu, "compute_s": compute_seconds(p),
        "comm_bytes": {"fsdp": c["fsdp_bytes"], "tp": c["tp_bytes"]},
        "comm_s": {"fsdp": c["fsdp_s"], "tp": c["tp_s"]},
        "step_time_s": step, "tokens_per_s": tokens_per_step / step, "tokens": p.tokens,
        "flops": training_flops(cfg, p.tokens, cfg.max_seq_len), "days": seconds / SECONDS_PER_DAY,
        "energy_mwh": kwh / 1000.0, "co2_t": carbon_tco2e(kwh, p.grid),
        "smallest_layout": smallest_layout(p),
    }


def _count(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def table(r: dict) -> str:
    b = r["memory_breakdown_gib"]
    ckpt = "on" if r["activation_checkpointing"] else "off"
    small = r["smallest_layout"]
    rows = [
        ("model", f"{r['preset']} ({_count(r['params'])} parameters), {r['precision']}"),
        ("layout", f"{r['gpus']} x {r['gpu']}: tp {r['tp']} x dp {r['dp']}, batch {r['batch_size']}"
                   f" x {r['seq_len']} per rank, {r['tokens_per_step']:,} tokens/step"),
        ("parameters", f"{b['params']:.2f} GiB/device"),
        ("gradients", f"{b['grads']:.2f} GiB"),
        ("optimizer", f"{b['optimizer']:.2f} GiB (AdamW, two moments)"),
        ("activations", f"{b['activations']:.2f} GiB ({b['activations_checkpointed']:.2f} "
                        f"checkpointed; checkpointing {ckpt})"),
        ("FSDP buffers", f"{b['fsdp_buffers']:.2f} GiB"),
        ("peak memory", f"{r['memory_gib_per_gpu']:.1f} GiB of {r['device_memory_gib']:.1f}: "
                        + ("fits" if r["fits"] else "does NOT fit") + f" (at {USABLE:.0%})"),
        ("compute", f"{r['compute_s'] * 1e3:,.0f} ms/step at {r['mfu']:.1%} of peak"),
        ("comm", f"FSDP {r['comm_bytes']['fsdp'] / 1e9:.2f} GB {r['comm_s']['fsdp'] * 1e3:,.0f} ms,"
                 f" TP {r['comm_bytes']['tp'] / 1e9:.2f} GB {r['comm_s']['tp'] * 1e3:,.0f} ms"),
        ("step", f"{r['step_time_s'] * 1e3:,.0f} ms, {r['tokens_per_s']:,.0f} tokens/s"),
        ("smallest fit", f"{small['gpus']} x {r['gpu']}, tp {small['tp']} "
                         f"({small['memory_gib_per_gpu']:.1f} GiB)" if small else "none"),
    ]
    if r["tokens"]:
        rows += [("run", f"{r['tokens']:.3g} tokens, {r['flops']:.2E} FLOPs, {r['days']:.1f} days"),
                 ("energy", f"{r['energy_mwh']:.3g} MWh, {r['co2_t']:.3g} tCO2e")]
    return "\n".join(f"{k:<13} {v}" for k, v in rows)


def main(argv=None) -> None:
    a = argparse.ArgumentParser(description="Memory, step time, days, energy and carbon of a "
                                "training run (FSDP2 x tensor parallelism).")
    a.add_argument("--preset", default="2b", choices=list(PRESETS))
    a.add_argument("--gpus", type=int, default=1, help="devices in all")
    a.add_argument("--gpu", default="h200", help=f"one of {', '.join(HARDWARE)}")
    a.add_argument("--tokens", type=float, default=0.0, help="tokens to train on")
    a.add_argument("--tp", type=int, default=1, help="tensor-parallel degree")
    a.add_argument("--batch-size", type=int, help="sequences per data-parallel rank (default: "
                   "256K tokens per step over all ranks)")
    a.add_argument("--seq-len", type=int, help="default: the preset's max_seq_len")
    a.add_argument("--precision", default="bf16", choices=list(PRECISIONS))
    a.add_argument("--activation-checkpointing", action="store_true")
    a.add_argument("--mfu", type=float, help="model FLOPs utilisation (default: the device's)")
    a.add_argument("--pue", type=float, default=PAPER_PUE)
    a.add_argument("--grid", type=float, default=PAPER_GRID, help="kgCO2e/kWh")
    a.add_argument("--json", action="store_true", help="one JSON object")
    args = a.parse_args(argv)
    inputs = PlanInputs(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PlanInputs)})
    try:
        r = plan(inputs)
    except ValueError as e:
        a.error(str(e))
    print(json.dumps(r) if args.json else table(r))


if __name__ == "__main__":
    main()
