"""The learned T5 bias on FlexAttention, with the bias gradient computed apart (CUDA training).

FlexAttention can add the bias inside its kernel (`score_mod`). If the bias table needs a gradient
there, every score of every layer adds into a tiny table with atomics, and training crawls
(DESIGN.md: 2-10% MFU). Here the kernel reads the bias as a constant, and the bias gradient comes
from two facts:

1. The bias depends only on the distance d = i - j between query i and key j, and every
   d >= max_distance (W) shares the last bucket.
2. The score gradients of a softmax row sum to zero: dS = P * (dP - D), dP = dO v^T,
   D_i = dO_i . O_i, so sum_j dS_ij = D_i - D_i = 0.

So dL/dbias[d] = sum_i dS[i, i-d] is needed only on the band d < W, and all farther distances
together get minus the band's total. On CUDA one Triton kernel of lamda.attention.bias_grad
computes the band (per block of W/2 queries its three nearest key tiles, dS summed elementwise
over the batch, no atomics); `bias_grad_by_distance` is the same in plain torch ops (CPU, and the
reference): two small matmuls per block of W queries against its 2W nearest keys
(bench/RESULTS.md has both measured).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention.flex_attention import (AuxRequest, BlockMask, create_block_mask,
                                               flex_attention)

from lamda.attention import bias_grad
from lamda.attention.bias import RelativeBias, distance_bias
from lamda.config import SM90_D128, AttentionKernels

# Compiled once, lazily on first call; inside an already compiled model it is inlined.
_flex_compiled = torch.compile(flex_attention, dynamic=False)
_block_masks: dict[tuple[int, str], BlockMask] = {}


def _causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


@torch.compiler.disable
def causal_block_mask(T: int, device: torch.device) -> BlockMask:
    """The causal block mask for T x T, built once per (T, device)."""
    key = (T, str(device))
    if key not in _block_masks:
        _block_masks[key] = create_block_mask(_causal, None, None, T, T, device=device)
    return _block_masks[key]


def bias_grad_by_distance(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dout: Tensor,
                          dist_bias: Tensor, window: int) -> Tensor:
    """dL/d dist_bias (H, C) for causal attention with an additive per-distance bias, given
    every distance >= `window` has the same bias value (the last T5 bucket); C >= min(T, window)
    distances, the last standing for all farther ones.

    q, k, v, out, dout (B, H, T, D); lse (B, H, T) natural-log row normalisers of the forward.
    Products are in float32 (exact for bf16 inputs under TF32 matmuls too).
    """
    B, H, T, D = q.shape
    W = window
    n = -(-T // W)  # query blocks of W rows
    pad = n * W - T

    def blocks(x: Tensor) -> Tensor:  # (B, H, T, D) -> (B, H, n, W, D)
        return F.pad(x.float(), (0, 0, 0, pad)).view(B, H, n, W, D)

    def near_keys(x: Tensor) -> Tensor:  # (B, H, n, W, D) -> (B, H, n, 2W, D): previous + own block
        prev = F.pad(x, (0, 0, 0, 0, 1, 0))[:, :, :n]
        return torch.cat([prev, x], dim=3)

    qb, dob = blocks(q), blocks(dout)
    s = qb @ near_keys(blocks(k)).transpose(-1, -2)  # (B, H, n, W, 2W) q.k
    dp = dob @ near_keys(blocks(v)).transpose(-1, -2)  # (B, H, n, W, 2W) dO.v

    # Skew: row a of a block holds query a; column c key (block-1)*W + c, at distance a + W - c.
    # Taking columns c = a + 1 + m (m = 0..W-1) gives distance W - 1 - m for every row.
    def skew(x: Tensor) -> Tensor:  # (B, H, n, W, 2W) contiguous -> (B, H, n, W, W) indexed by m
        row = 2 * W
        return x.as_strided((B, H, n, W, W), (H * n * W * row, n * W * row, W * row, row + 1, 1), 1)

    dist = W - 1 - torch.arange(W, device=q.device)  # (W,) distance of column m
    i = torch.arange(n * W, device=q.device).view(n, W, 1)  # (n, W, 1) query position
    valid = (i >= dist) & (i < T)  # (n, W, W): key inside the sequence, query not padding
    bias = F.pad(dist_bias.float(), (0, max(0, W - dist_bias.shape[1])))[:, dist]  # (H, W)
    lse_b = F.pad(lse.float(), (0, pad)).view(B, H, n, W, 1)
    delta = F.pad((dout.float() * out.float()).sum(-1), (0, pad)).view(B, H, n, W, 1)

    p = torch.exp(skew(s) + bias[None, :, None, None, :] - lse_b)  # (B, H, n, W, W)
    ds = torch.where(valid, p * (skew(dp) - delta), 0.0)
    g = ds.sum(dim=(0, 2, 3)).flip(-1)  # (H, W) by distance 0..W-1
    return spread_band(g, dist_bias.shape[1])


def spread_band(g: Tensor, T: int) -> Tensor:
    """The band's gradient g (H, W) by distance -> (H, T) by distance: rows sum to zero, so the
    far distances (one bucket) get minus the band's total, given to distance W (T > W)."""
    H, W = g.shape
    grad = F.pad(g[:, :min(W, T)].float(), (0, max(0, T - W)))
    if T > W:
        grad[:, W] = -g.sum(-1)
    return grad


class _BiasGradOnBand(torch.autograd.Function):
    """Identity on the attention output whose backward adds the bias gradient (see the module
    docstring); the kernel itself returns gradients for q, k and v only."""

    @staticmethod
    def forward(ctx, out, dist_bias, q, k, v, lse, window, kernel):
        ctx.save_for_backward(q, k, v, out, lse, dist_bias)
        ctx.window, ctx.kernel = window, kernel
        return out.view_as(out)

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, dist_bias = ctx.saved_tensors
        g = band_gradient(q, k, v, out, lse, dout, dist_bias, ctx.window, ctx.kernel)
        return dout, g.to(dist_bias.dtype), None, None, None, None, None, None


def bias_grad_kernel(kernels: AttentionKernels) -> tuple[str, tuple[int, ...]]:
    """(kernel name, its launch settings) for band_bias_grad, from the model's kernel settings."""
    return kernels.bias_grad, kernels.bias_grad_launch()


def band_gradient(q, k, v, out, lse, dout, dist_bias, window,
                  kernel: tuple[str, tuple[int, ...]] | None = None, use_kernel=None):
    """bias_grad_by_distance, by the Triton kernel of lamda.attention.bias_grad where it applies
    (by default on CUDA); `kernel` as from bias_grad_kernel (default: the default settings')."""
    T, W = dist_bias.shape[1], window
    if use_kernel is None:
        use_kernel = q.is_cuda and bias_grad.supports(q.shape[-1], W)
    if not use_kernel:
        return bias_grad_by_distance(q, k, v, out, lse, dout, dist_bias, window)
    name, launch = kernel or bias_grad_kernel(AttentionKernels())
    near = F.pad(dist_bias[:, :W], (0, W - min(W, T)))  # (H, W); distances >= T never occur
    g = bias_grad.band_bias_grad(q, k, v, out, lse, dout, near, 1.0, name, list(launch))
    return spread_band(g, T)


@torch._dynamo.assume_constant_result
def _hopper() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


def kernel_options(head_dim: int, chosen: dict | None) -> dict:
    """FlexAttention's kernel_options on CUDA: those `chosen` (AttentionKernels.flex_options), or
    SM90_D128 where it applies."""
    if chosen is not None:
        return chosen
    return SM90_D128 if head_dim == 128 and _hopper() else {}


def flex_with_lse(q: Tensor, k: Tensor, v: Tensor, dist_bias: Tensor, block_mask: BlockMask,
                  options: dict | None = None) -> tuple[Tensor, Tensor]:
    """Causal attention with the constant per-distance bias (H, C) read in-kernel, distances
    beyond C - 1 reading column C - 1 -> (out, lse). `options`: as kernel_options takes them."""
    last = dist_bias.shape[1] - 1

    def score_mod(score, b, h, q_idx, kv_idx):
        # masked-out scores are modified too: clamp keeps their index in range
        return score + dist_bias[h, torch.clamp(q_idx - kv_idx, 0, last)]

    if q.is_cuda:
        kernel, options = _flex_compiled, kernel_options(q.shape[-1], options) or None
    else:  # CPU: eager, forward only
        kernel, options = flex_attention, None
    out, aux = kernel(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=1.0,
                      kernel_options=options, return_aux=AuxRequest(lse=True))
    return out, aux.lse


@dataclass
class FlexPrepared:
    dist_bias: Tensor  # (H, min(T, W + 1)) float32 bias per distance (near_table; else (H, T)),
    #                    differentiable w.r.t. the table
    block_mask: BlockMask  # causal T x T
    window: int  # distances >= window share one bias value (max_distance)


class FlexBackend:
    """Causal self-attention only (no KV cache, no padding mask, no dropout)."""

    def __init__(self, kernels: AttentionKernels = AttentionKernels()):
        self.near_table = kernels.near_table
        self.options = kernels.flex_kernel_options()
        self.bias_grad = bias_grad_kernel(kernels)

    def prepare(self, bias: RelativeBias, dtype: torch.dtype) -> FlexPrepared:
        if not bias.self_attention or bias.key_mask is not None or bias.segments is not None:
            raise ValueError("the flex backend does causal self-attention without padding masks; "
                             "use 'sdpa' or 'auto' with a KV cache, key_mask or packed rows")
        T, W = bias.q_pos.shape[-1], bias.max_distance
        columns = min(T, W + 1) if self.near_table else T
        return FlexPrepared(distance_bias(bias.table, columns, bias.num_buckets, W),
                            causal_block_mask(T, bias.table.device), W)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, prepared: FlexPrepared,
               dropout_p: float) -> Tensor:
        if dropout_p > 0:
            raise ValueError("the flex backend has no attention dropout; use 'sdpa'")
        out, lse = flex_with_lse(q, k, v, prepared.dist_bias.detach(), prepared.block_mask,
                                 self.options)
        return _BiasGradOnBand.apply(out, prepared.dist_bias, q.detach(), k.detach(), v.detach(),
                                     lse.detach(), prepared.window, self.bias_grad)

