"""One attention layer, forward + backward, at a training shape, per variant (CUDA). Prints JSON.

    python bench/attention.py                       # 350m's shape: B 16, H 16, T 1024, D 128

Variants (separated by ';'), each compiled, timed as the median of 20 runs after warm-up, with
its relative error against a float64 reference (output, q gradient, bias-table gradient). One
layer is little GPU work: these times include the CPU's launch overhead, so compare kernels with
--profile and whole steps with bench/train_step.py.
  sdpa        the reference backend: materialised bias, SDPA (no fused kernel takes the bias)
  flex        the FlexAttention backend (lamda.attention.flex); `flex:bwd_BLOCK_M1=64,...` sets
              its kernel_options
  flex_alltable  flex with score_mod reading the whole (H, T) bias row (near_table off)
  band        the band backend (lamda.attention.band): Triton band + FlashAttention far part;
              `band:fwd=8.2,dq=4.1.512` sets launch settings (AttentionKernels.launch)
  band_cudnn  the same with cuDNN's fused attention for the far part
  cudnn_band  a probe: cuDNN's fused attention with the bias passed as a constant tensor, plus the
              same band gradient as flex
  flex_torchband  flex with its bias gradient in plain torch ops instead of the Triton kernel
  nobias      SDPA causal without any bias: the upper bound
With --profile, each variant's top kernels of one more run follow its line.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.timing import median_ms  # noqa: E402
from bench.train_step import profile_step  # noqa: E402
from lamda.attention import flex as attention_flex  # noqa: E402
from lamda.attention import RelativeBias, distance_bias, get_backend  # noqa: E402
from lamda.attention.flex import _BiasGradOnBand, bias_grad_kernel  # noqa: E402
from lamda.config import AttentionKernels  # noqa: E402

BUCKETS, MAX_DISTANCE = 32, 128


def backend_variant(name, kernels):
    def attend(q, k, v, table):
        pos = torch.arange(q.shape[2], device=q.device)
        bias = RelativeBias(table, pos, pos, None, BUCKETS, MAX_DISTANCE, self_attention=True)
        be = get_backend(name, kernels=kernels)
        return be.attend(q, k, v, be.prepare(bias, q.dtype), 0.0)
    return attend


def cudnn_band(q, k, v, table):
    T = q.shape[2]
    dist_bias = distance_bias(table, T, BUCKETS, MAX_DISTANCE)  # (H, T), differentiable
    pos = torch.arange(T, device=q.device)
    dense = dist_bias.detach()[:, (pos[:, None] - pos[None]).clamp(min=0)][None].to(q.dtype)
    out, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(
        q, k, v, dense, True, 0.0, True, False, scale=1.0)[:2]
    lse = lse.reshape(q.shape[:3]).float()
    return _BiasGradOnBand.apply(out, dist_bias, q.detach(), k.detach(), v.detach(), lse,
                                 MAX_DISTANCE, bias_grad_kernel(AttentionKernels()))


def nobias(q, k, v, table):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0) + 0 * table.sum()


# variant -> the backend it runs; the others are plain functions
BACKENDS = {"sdpa": "sdpa", "flex": "flex", "band": "band", "band_cudnn": "band",
            "flex_torchband": "flex", "flex_alltable": "flex"}
PROBES = {"cudnn_band": cudnn_band, "nobias": nobias}
KERNEL_BAND_GRADIENT = attention_flex.band_gradient


def variant(name: str):
    """The function for `name`, with the kernel settings it asks for."""
    base, _, opts = name.partition(":")
    # a probe of the torch bias gradient: the one module function a bench replaces (reset for
    # every other variant, the probes included: cudnn_band's backward calls it)
    attention_flex.band_gradient = partial(KERNEL_BAND_GRADIENT,
                                           use_kernel=False if base == "flex_torchband" else None)
    if base in PROBES:
        return PROBES[base]
    if base.startswith("flex"):
        kernels = AttentionKernels(flex_options=opts or None, near_table=base != "flex_alltable")
    else:
        kernels = AttentionKernels(far="cudnn" if base == "band_cudnn" else "flash", launch=opts)
    return backend_variant(BACKENDS[base], kernels)


def run(fn, q, k, v, table, dout):
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    table = table.detach().clone().requires_grad_()
    out = fn(q, k, v, table)
    out.backward(dout.to(out.dtype))
    return out, q.grad, table.grad


def rel_err(x, ref):
    return round(((x.double() - ref).norm() / ref.norm()).item(), 5)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--variants", default="sdpa;flex;band;nobias", help="separated by ;")
    p.add_argument("--profile", action="store_true", help="top kernels of each variant")
    a = p.parse_args(argv)
    torch.set_float32_matmul_precision("high")
    g = torch.Generator(device="cuda").manual_seed(0)
    shape = (a.batch, a.heads, a.seq, a.head_dim)
    q, k, v, dout = (torch.randn(shape, device="cuda", generator=g) for _ in range(4))
    q = q * a.head_dim ** -0.5 * 2
    table = torch.randn(BUCKETS, a.heads, device="cuda", generator=g)
    ref = run(variant("sdpa"), *(x.double() for x in (q, k, v)), table.double(), dout.double())
    qb, kb, vb = (x.bfloat16() for x in (q, k, v))
    for name in a.variants.split(";"):
        res = {"bench": "attention", "variant": name, "device": torch.cuda.get_device_name(),
               "shape": list(shape)}
        try:
            fn = torch.compile(variant(name), dynamic=False)
            out, dq, dtable = run(fn, qb, kb, vb, table, dout)
            res["err_out"], res["err_dq"] = rel_err(out, ref[0]), rel_err(dq, ref[1])
            res["err_dtable"] = rel_err(dtable, ref[2]) if name != "nobias" else None
            res["fwd_bwd_ms"] = round(median_ms(lambda: run(fn, qb, kb, vb, table, dout), "cuda",
                                                reps=20, warmup=5), 3)
        except Exception as e:  # a probe may be refused by the library: report it
            res["error"] = f"{type(e).__name__}: {e}"[:400]
        print(json.dumps(res), flush=True)
        if a.profile and "error" not in res:
            profile_step(lambda: run(fn, qb, kb, vb, table, dout), "cuda", top=12)
        torch._dynamo.reset()


if __name__ == "__main__":
    main()
