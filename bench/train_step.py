"""Training-step throughput of one preset in one process (no Ray). Prints JSON.

    python bench/train_step.py --preset tiny --device cpu
    python bench/train_step.py --preset 350m --device cuda --batch-size 16 --seq-len 1024 --compile \
        --attn-backend sdpa,flex,nobias

Each backend in `--attn-backend` (comma-separated) is measured in turn in this process and printed
as one JSON line; a last line gives each one's speed relative to the first. `nobias` is an upper
bound, not a model: SDPA's causal kernel with no relative bias at all.
Step time is the median over the timed steps; tokens/s counts every input token (forward +
backward + AdamW). Achieved TFLOP/s use ModelConfig.flops_per_token; MFU divides by the
GPU's peak from lamda.accounting (not reported on CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from jobs.flags import add_flags, from_flags  # noqa: E402
from lamda.accounting import hardware, mfu  # noqa: E402
from lamda.attention.backends import register  # noqa: E402
from lamda.config import PRESETS, AttentionKernels, ModelConfig  # noqa: E402
from lamda.model import build_model, lm_loss  # noqa: E402
from lamda.training import TrainConfig, build_optimizer, train_step  # noqa: E402


class NoBias:
    """Upper bound for the benchmark: causal attention without the relative bias."""

    def prepare(self, bias, dtype):
        return None

    def attend(self, q, k, v, prepared, dropout_p):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0)


register("nobias", NoBias())


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(a) -> dict:
    torch.manual_seed(0)
    cuda = a.device.startswith("cuda")
    cfg = ModelConfig.from_name(a.preset, max_seq_len=a.seq_len, attn_backend=a.attn_backend,
                                attn_kernels=a.kernels)
    model = build_model(cfg, device=a.device)
    if a.dtype == "bf16":
        model = model.to(torch.bfloat16)
    if a.compile:
        model = torch.compile(model)
    tcfg = TrainConfig(steps=a.steps + a.warmup, batch_size=a.batch_size, seq_len=a.seq_len,
                       warmup_steps=1)
    opt = build_optimizer(model, tcfg)
    loss_fn = torch.compile(lm_loss) if a.compile else lm_loss
    data = torch.randint(0, cfg.vocab_size, (a.batch_size, a.seq_len + 1), device=a.device)
    batch = (data[:, :-1], data[:, 1:], None, None)  # inputs, targets, loss mask, segments
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(a.warmup + a.steps):
        sync(a.device)
        t0 = time.perf_counter()
        train_step(model, opt, [batch], step, tcfg, loss_fn)
        sync(a.device)
        if step >= a.warmup:
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    if a.profile:
        profile_step(lambda: train_step(model, opt, [batch], 0, tcfg, loss_fn), a.device)
    tokens = a.batch_size * a.seq_len
    flops = cfg.flops_per_token(a.seq_len) * tokens
    name = torch.cuda.get_device_name() if cuda else "cpu"
    return {
        "bench": "train_step", "preset": a.preset, "device": name, "dtype": a.dtype,
        "compile": a.compile, "attn_backend": a.attn_backend,
        "attn_kernels": dataclasses.asdict(cfg.attn_kernels), "threads": torch.get_num_threads(),
        "params": cfg.num_params(non_embedding=False), "batch_size": a.batch_size,
        "seq_len": a.seq_len, "steps_timed": a.steps, "step_s": round(step_s, 5),
        "tokens_per_s": round(tokens / step_s, 1),
        "tflops": round(flops / step_s / 1e12, 4),
        "mfu": round(mfu(flops, step_s, 1, hardware(name).peak_flops), 4) if cuda else None,
        "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    }


def profile_step(fn, device: str, top: int = 15) -> None:
    """One more step under the profiler; prints its most expensive kernels as a JSON line."""
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=acts) as prof:
        fn()
        sync(device)
    key = "self_device_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    rows = [{"kernel": e.key[:90], "ms": round(getattr(e, key) / 1e3, 3), "calls": e.count}
            for e in events[:top]]
    total = sum(getattr(e, key) for e in prof.key_averages()) / 1e3
    print(json.dumps({"profile_total_ms": round(total, 2), "top": rows}), flush=True)


def free(device: str) -> None:
    """Drop compiled graphs and cached blocks between measurements."""
    torch._dynamo.reset()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", choices=list(PRESETS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, choices=["fp32", "bf16"], help="default: bf16 on cuda")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--attn-backend", default="sdpa", help="comma-separated: auto, sdpa, flex, band, nobias")
    p.add_argument("--profile", action="store_true", help="print the top kernels of one more step")
    add_flags(p.add_argument_group("attention kernels (as jobs.pretrain)"), AttentionKernels,
              prefix="kernels.")
    p.add_argument("--flex-autotune", action="store_true",
                   help="Inductor autotunes FlexAttention's block sizes (matmuls stay cuBLAS); "
                   "its AUTOTUNE tables go to stderr")
    a = p.parse_args(argv)
    a.dtype = a.dtype or ("bf16" if a.device.startswith("cuda") else "fp32")
    a.kernels = from_flags(AttentionKernels, vars(a), prefix="kernels.")
    if a.device.startswith("cuda"):
        torch.set_float32_matmul_precision("high")  # TF32 for the few float32 matmuls
    if a.flex_autotune:
        import torch._inductor.config as inductor
        inductor.max_autotune, inductor.max_autotune_gemm_backends = True, "ATEN"
    results = []
    for backend in a.attn_backend.split(","):
        try:
            results.append(run(argparse.Namespace(**{**vars(a), "attn_backend": backend})))
        except Exception as e:  # e.g. out of memory: report it and go on with the others
            results.append({"bench": "train_step", "preset": a.preset, "attn_backend": backend,
                            "error": f"{type(e).__name__}: {e}"[:500]})
        print(json.dumps(results[-1]), flush=True)
        free(a.device)
    ok = [r for r in results if "step_s" in r]
    if len(ok) > 1:
        print(json.dumps({"speed_vs_" + ok[0]["attn_backend"]: {
            r["attn_backend"]: round(ok[0]["step_s"] / r["step_s"], 3) for r in ok}}))


if __name__ == "__main__":
    main()
