"""The learned T5 bias as a near band plus a plain causal far part (CUDA training).

Two facts make the bias cheap:

1. It depends only on the distance d = i - j between query i and key j, and every d >= W
   (max_distance) shares the last bucket: one value per head, b_far.
2. Adding the same value to a whole softmax row changes nothing.

So with nb(d) = b(d) - b_far, attention with the bias equals attention where the keys at
distances d < W (the band) carry nb(d) and all farther keys carry nothing. The far part is then
plain causal attention of queries W.. over keys ..T-W (a square causal mask, shifted by W), which
the fastest fused kernel (FlashAttention) does at full speed. The band, W keys per query, is three
small Triton kernels: the forward and dk + dv here, dq + the bias gradient from
lamda.attention.bias_grad. Forward merges the two parts through their log-sum-exps; backward runs
each part's backward with the merged output and log-sum-exp, which gives each part its exact share
of the gradients (as ring attention does).

The bias gradient comes with dq from lamda.attention.bias_grad's dq kernel (no atomics); autograd
then gives b_far minus the band's total (softmax rows sum to zero).

Experimental: measured on an H200 at T = 1024 (bench/RESULTS.md), correct but slower than the
flex backend; its dq kernel (three accumulators, no room to pipeline) is the slow part. Nothing
in production uses this module; the flex backend's bias gradient is lamda.attention.bias_grad.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from lamda.attention.bias import RelativeBias, distance_bias
from lamda.attention.bias_grad import (band_dq, bht, check_supported,
                                       last_dim_contiguous, triton)
from lamda.config import AttentionKernels

if triton is not None:
    import triton.language as tl


class BandSettings(NamedTuple):
    """The band backend's kernel settings, taken once from the model's AttentionKernels (plain
    constants, so a compiled model sees them as such)."""

    far: str  # the far part's kernel: "flash" or "cudnn" (CPU: torch's CPU flash kernel)
    fwd: tuple[int, ...]  # (num_warps, num_stages) of the forward kernel
    dq: tuple[int, ...]  # (num_warps, num_stages, programs) of the dq kernel
    dkdv: tuple[int, ...]  # (num_warps, num_stages) of the dk + dv kernel

    @classmethod
    def of(cls, kernels: AttentionKernels) -> "BandSettings":
        launch = kernels.launch_settings()
        return cls(kernels.far, launch["fwd"], launch["dq"], launch["dkdv"])


if triton is not None:

    @triton.jit
    def _band_fwd_kernel(Q, K, V, NB, O, LSE, sqb, sqh, sqt, skb, skh, skt, svb, svh, svt,
                         sob, soh, sot, H, T, scale,
                         W: tl.constexpr, BM: tl.constexpr, D: tl.constexpr):
        """One block of BM = W/2 queries of one (batch, head) over its band (3 key tiles)."""
        b, h = tl.program_id(1) // H, tl.program_id(1) % H
        i = tl.program_id(0) * BM + tl.arange(0, BM)  # (BM,) query positions
        d = tl.arange(0, D)
        q = tl.load(Q + b * sqb + h * sqh + i[:, None] * sqt + d[None, :],
                    mask=(i < T)[:, None], other=0.0)
        m = tl.full([BM], float("-inf"), tl.float32)  # running row max
        l = tl.zeros([BM], tl.float32)  # running row sum
        acc = tl.zeros([BM, D], tl.float32)
        for t in tl.static_range(3):  # t = 0 is the diagonal tile: every row has a key there
            j = tl.program_id(0) * BM - t * BM + tl.arange(0, BM)  # (BM,) key positions
            kmask = ((j >= 0) & (j < T))[:, None]
            k = tl.load(K + b * skb + h * skh + j[:, None] * skt + d[None, :], mask=kmask, other=0.0)
            v = tl.load(V + b * svb + h * svh + j[:, None] * svt + d[None, :], mask=kmask, other=0.0)
            dist = i[:, None] - j[None, :]  # (BM, BM)
            valid = (j[None, :] >= 0) & (dist >= 0) & (dist < W)
            nb = tl.load(NB + h * W + tl.minimum(tl.maximum(dist, 0), W - 1))
            s = tl.where(valid, tl.dot(q, tl.trans(k)) * scale + nb, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, 1))
            p = tl.exp(s - m_new[:, None])
            alpha = tl.exp(m - m_new)
            l = l * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m = m_new
        tl.store(O + b * sob + h * soh + i[:, None] * sot + d[None, :],
                 (acc / l[:, None]).to(O.dtype.element_ty), mask=(i < T)[:, None])
        tl.store(LSE + (b * H + h) * T + i, m + tl.log(l), mask=i < T)

    @triton.jit
    def _band_dkdv_kernel(Q, K, V, DO, LSE, DELTA, NB, DK, DV, DKF, DVF,
                          sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sdob, sdoh, sdot,
                          sdkb, sdkh, sdkt, sfb, sfh, sft, sgb, sgh, sgt, H, T, scale,
                          W: tl.constexpr, BM: tl.constexpr, D: tl.constexpr,
                          HAS_FAR: tl.constexpr):
        """One block of BM keys of one (batch, head) against the 3 query tiles that see it:
        dk, dv (plus the far part's, which covers keys ..T-W-1 at the same rows)."""
        b, h = tl.program_id(1) // H, tl.program_id(1) % H
        j = tl.program_id(0) * BM + tl.arange(0, BM)
        d = tl.arange(0, D)
        cols = (j < T)[:, None]
        k = tl.load(K + b * skb + h * skh + j[:, None] * skt + d[None, :], mask=cols, other=0.0)
        v = tl.load(V + b * svb + h * svh + j[:, None] * svt + d[None, :], mask=cols, other=0.0)
        dk = tl.zeros([BM, D], tl.float32)
        dv = tl.zeros([BM, D], tl.float32)
        for t in tl.static_range(3):
            i = tl.program_id(0) * BM + t * BM + tl.arange(0, BM)  # (BM,) queries
            qmask = (i < T)[:, None]
            q = tl.load(Q + b * sqb + h * sqh + i[:, None] * sqt + d[None, :], mask=qmask, other=0.0)
            do = tl.load(DO + b * sdob + h * sdoh + i[:, None] * sdot + d[None, :], mask=qmask,
                         other=0.0)
            lse = tl.load(LSE + (b * H + h) * T + i, mask=i < T, other=0.0)
            delta = tl.load(DELTA + (b * H + h) * T + i, mask=i < T, other=0.0)
            dist = i[:, None] - j[None, :]
            valid = (dist >= 0) & (dist < W) & (i[:, None] < T)
            nb = tl.load(NB + h * W + tl.minimum(tl.maximum(dist, 0), W - 1))
            p = tl.where(valid, tl.exp(tl.dot(q, tl.trans(k)) * scale + nb - lse[:, None]), 0.0)
            ds = p * (tl.dot(do, tl.trans(v)) - delta[:, None])  # (BM queries, BM keys)
            dv += tl.dot(tl.trans(p.to(do.dtype)), do)
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q)
        dk = dk * scale
        if HAS_FAR:
            far = cols & (j < T - W)[:, None]
            dk += tl.load(DKF + b * sfb + h * sfh + j[:, None] * sft + d[None, :], mask=far,
                          other=0.0).to(tl.float32)
            dv += tl.load(DVF + b * sgb + h * sgh + j[:, None] * sgt + d[None, :], mask=far,
                          other=0.0).to(tl.float32)
        tl.store(DK + b * sdkb + h * sdkh + j[:, None] * sdkt + d[None, :],
                 dk.to(DK.dtype.element_ty), mask=cols)
        tl.store(DV + b * sdkb + h * sdkh + j[:, None] * sdkt + d[None, :],
                 dv.to(DV.dtype.element_ty), mask=cols)


@torch.library.custom_op("lamda::band_attention_fwd", mutates_args=())
def band_attention_fwd(q: Tensor, k: Tensor, v: Tensor, near_bias: Tensor, scale: float,
                       launch: list[int]) -> tuple[Tensor, Tensor]:
    """The band part: each query over its W nearest keys (itself included) with bias
    near_bias (H, W) by distance -> (out (B, H, T, D), lse (B, H, T) float32). `launch`:
    (num_warps, num_stages)."""
    B, H, T, D = q.shape
    W = near_bias.shape[1]
    check_supported(q, W)
    q, k, v = last_dim_contiguous(q, k, v)
    out = torch.empty_like(q)
    lse = torch.empty(B, H, T, device=q.device, dtype=torch.float32)
    BM = W // 2
    warps, stages = launch
    _band_fwd_kernel[(triton.cdiv(T, BM), B * H)](
        q, k, v, near_bias.contiguous(), out, lse, *bht(q), *bht(k), *bht(v), *bht(out),
        H, T, scale, W=W, BM=BM, D=D, num_warps=warps, num_stages=stages)
    return out, lse


@band_attention_fwd.register_fake
def _(q, k, v, near_bias, scale, launch):
    (q,) = last_dim_contiguous(q)
    return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("lamda::band_attention_bwd", mutates_args=())
def band_attention_bwd(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dout: Tensor,
                       near_bias: Tensor, scale: float, dq_far: Tensor | None,
                       dk_far: Tensor | None, dv_far: Tensor | None, dq_launch: list[int],
                       dkdv_launch: list[int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of the band part given the *merged* out and lse, plus the far part's gradients
    (for queries W.. and keys ..T-W, None when T <= W) -> (dq, dk, dv, d near_bias). Launch
    settings as in BandSettings."""
    B, H, T, D = q.shape
    W = near_bias.shape[1]
    q, k, v, out, dout = last_dim_contiguous(q, k, v, out, dout)
    dq, delta, dnb = band_dq(q, k, v, out, lse, dout, near_bias, scale, dq_far, True, dq_launch)
    dk, dv = torch.empty_like(k), torch.empty_like(k)  # the kernel stores both with dk's strides
    has_far = dk_far is not None
    fk, fv = (dk_far, dv_far) if has_far else (k, k)
    warps, stages = dkdv_launch
    BM = W // 2
    _band_dkdv_kernel[(triton.cdiv(T, BM), B * H)](
        q, k, v, dout, lse, delta, near_bias.contiguous(), dk, dv, fk, fv,
        *bht(q), *bht(k), *bht(v), *bht(dout), *bht(dk), *bht(fk), *bht(fv), H, T, scale,
        W=W, BM=BM, D=D, HAS_FAR=has_far, num_warps=warps, num_stages=stages)
    return dq, dk, dv, dnb


@band_attention_bwd.register_fake
def _(q, k, v, out, lse, dout, near_bias, scale, dq_far, dk_far, dv_far, dq_launch, dkdv_launch):
    q, k = last_dim_contiguous(q, k)
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(k),
            torch.empty_like(near_bias))


# ---- the far part: plain causal attention of queries W.. over keys ..T-W ----

def _far_forward(q: Tensor, k: Tensor, v: Tensor, scale: float, far: str
                 ) -> tuple[Tensor, Tensor, tuple]:
    """By the `far` kernel ("flash" or "cudnn") -> (out, lse (B, H, T'), what the backward needs)."""
    if not q.is_cuda:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, True, scale=scale)
        return out, lse, ()
    if far == "cudnn":
        out, lse, cq, ck, mq, mk, seed, offset, _ = torch.ops.aten._scaled_dot_product_cudnn_attention(
            q, k, v, None, True, 0.0, True, False, scale=scale)
        return out, lse.view(q.shape[:3]), (cq, ck, mq, mk, seed, offset)
    out, lse, cq, ck, mq, mk, seed, offset, _ = torch.ops.aten._scaled_dot_product_flash_attention(
        q, k, v, 0.0, True, False, scale=scale)
    return out, lse, (cq, ck, mq, mk, seed, offset)


def _far_backward(dout, q, k, v, out, lse, saved, scale, far):
    if not q.is_cuda:
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            dout, q, k, v, out, lse, 0.0, True, scale=scale)
    cq, ck, mq, mk, seed, offset = saved
    if far == "cudnn":
        return torch.ops.aten._scaled_dot_product_cudnn_attention_backward(
            dout, q, k, v, out, lse[..., None], seed, offset, None, cq, ck, mq, mk, 0.0, True,
            scale=scale)
    return torch.ops.aten._scaled_dot_product_flash_attention_backward(
        dout, q, k, v, out, lse, cq, ck, mq, mk, 0.0, True, seed, offset, scale=scale)


def _merge(out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor) -> tuple[Tensor, Tensor]:
    """Attention over two disjoint key sets from each one's output and log-sum-exp."""
    lse = torch.logaddexp(lse_a, lse_b)
    out = out_a.float() * torch.exp(lse_a - lse)[..., None] + \
        out_b.float() * torch.exp(lse_b - lse)[..., None]
    return out.to(out_a.dtype), lse


class _BandPlusFar(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, near_bias, scale, settings):
        T, W = q.shape[2], near_bias.shape[1]
        out, lse = band_attention_fwd(q, k, v, near_bias, scale, list(settings.fwd))
        saved = ()
        if T > W:
            out_f, lse_f, saved = _far_forward(q[:, :, W:], k[:, :, :T - W], v[:, :, :T - W], scale,
                                               settings.far)
            tail, lse_tail = _merge(out[:, :, W:], lse[:, :, W:], out_f, lse_f)
            out = torch.cat([out[:, :, :W], tail], dim=2)
            lse = torch.cat([lse[:, :, :W], lse_tail], dim=2)
        ctx.save_for_backward(q, k, v, out, lse, near_bias,
                              *[s for s in saved if isinstance(s, Tensor)])
        ctx.far = [s if not isinstance(s, Tensor) else "tensor" for s in saved]
        ctx.scale, ctx.settings = scale, settings
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, near_bias, *tensors = ctx.saved_tensors
        T, W = q.shape[2], near_bias.shape[1]
        saved = [tensors.pop(0) if s == "tensor" else s for s in ctx.far]
        far = (None, None, None)
        if T > W:
            far = _far_backward(dout[:, :, W:], q[:, :, W:], k[:, :, :T - W], v[:, :, :T - W],
                                out[:, :, W:], lse[:, :, W:].contiguous(), saved, ctx.scale,
                                ctx.settings.far)
        dq, dk, dv, dnb = band_attention_bwd(q, k, v, out, lse, dout, near_bias, ctx.scale, *far,
                                             list(ctx.settings.dq), list(ctx.settings.dkdv))
        return dq, dk, dv, dnb, None, None


def band_attention(q: Tensor, k: Tensor, v: Tensor, near_bias: Tensor, scale: float = 1.0,
                   settings: BandSettings = BandSettings.of(AttentionKernels())) -> Tensor:
    """Causal attention, q k v (B, H, T, D), where keys at distance d < W carry near_bias[:, d]
    (H, W) and farther keys carry nothing -> (B, H, T, D)."""
    return _BandPlusFar.apply(q, k, v, near_bias.float(), scale, settings)


def near_bias(bias: RelativeBias) -> Tensor:
    """(H, W) float32: the bias at distances 0..W-1 minus the far bias (differentiable)."""
    W = bias.max_distance
    b = distance_bias(bias.table, W + 1, bias.num_buckets, W)  # (H, W + 1)
    return b[:, :W] - b[:, W:]


@dataclass
class BandPrepared:
    near_bias: Tensor  # (H, W) float32 bias by distance, relative to the far bias


class BandBackend:
    """Causal self-attention only (no KV cache, no padding mask, no dropout)."""

    def __init__(self, kernels: AttentionKernels = AttentionKernels()):
        self.settings = BandSettings.of(kernels)

    def prepare(self, bias: RelativeBias, dtype: torch.dtype) -> BandPrepared:
        if not bias.self_attention or bias.key_mask is not None or bias.segments is not None:
            raise ValueError("the band backend does causal self-attention without padding masks; "
                             "use 'sdpa' or 'auto' with a KV cache, key_mask or packed rows")
        return BandPrepared(near_bias(bias))

    def attend(self, q: Tensor, k: Tensor, v: Tensor, prepared: BandPrepared,
               dropout_p: float) -> Tensor:
        if dropout_p > 0:
            raise ValueError("the band backend has no attention dropout; use 'sdpa'")
        return band_attention(q, k, v, prepared.near_bias, settings=self.settings)

