"""The bias gradient of attention with the T5 bias on its near band, by Triton kernels (CUDA;
Triton's interpreter on CPU in the tests): the flex backend's bias gradient (production), also the
band backend's dq kernel.

Keys at distances d < W (max_distance) carry near_bias[:, d]. In a block of W/2 queries, the three
key tiles before and on the diagonal have distances t * W/2 + r - c that depend only on the tile t
and the element (r, c), so each program sums its score gradients dS elementwise over the batch and
a tiny diagonal sum at the end gives dL/d near_bias: no atomics. Two kernels do it: "tiles", a
program per key tile (one accumulator: room to pipeline; the faster on an H200), and "rows", the
dq kernel (three tiles per program) without dq (bench/RESULTS.md).
"""

from __future__ import annotations

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the kernels report themselves unavailable
    triton = None


def supports(head_dim: int, window: int) -> bool:
    """Whether the kernels run here: Triton present, a power-of-two head size in 16..256 and a
    power-of-two max_distance >= 32 (blocks of W/2 queries)."""
    pow2 = lambda n: n & (n - 1) == 0  # noqa: E731
    return triton is not None and 16 <= head_dim <= 256 and pow2(head_dim) and window >= 32 \
        and pow2(window)


if triton is not None:

    @triton.jit
    def _band_tile(q, do, lse, delta, dq, i, K, V, kb, skt, vb, svt, NB, j0, T, scale,
                   W: tl.constexpr, BM: tl.constexpr, D: tl.constexpr, COMPUTE_DQ: tl.constexpr):
        """Queries i against the key tile at j0: its score gradients dS (BM, BM), and dq plus
        this tile's share."""
        j = j0 + tl.arange(0, BM)
        d = tl.arange(0, D)
        kmask = ((j >= 0) & (j < T))[:, None]
        k = tl.load(K + kb + j[:, None] * skt + d[None, :], mask=kmask, other=0.0)
        v = tl.load(V + vb + j[:, None] * svt + d[None, :], mask=kmask, other=0.0)
        dist = i[:, None] - j[None, :]
        valid = (j[None, :] >= 0) & (dist >= 0) & (dist < W) & (i[:, None] < T)
        nb = tl.load(NB + tl.minimum(tl.maximum(dist, 0), W - 1))
        p = tl.where(valid, tl.exp(tl.dot(q, tl.trans(k)) * scale + nb - lse[:, None]), 0.0)
        ds = p * (tl.dot(do, tl.trans(v)) - delta[:, None])
        if COMPUTE_DQ:
            dq += tl.dot(ds.to(k.dtype), k)
        return ds, dq

    @triton.jit
    def _query_rows(Q, DO, O, LSE, b, h, i, sqb, sqh, sqt, sdob, sdoh, sdot, sob, soh, sot, H, T,
                    D: tl.constexpr):
        """q and dO (BM, D) of queries i, D_i = dO_i . O_i and their log-sum-exps."""
        d = tl.arange(0, D)
        rows = (i < T)[:, None]
        q = tl.load(Q + b * sqb + h * sqh + i[:, None] * sqt + d[None, :], mask=rows, other=0.0)
        do = tl.load(DO + b * sdob + h * sdoh + i[:, None] * sdot + d[None, :], mask=rows, other=0.0)
        o = tl.load(O + b * sob + h * soh + i[:, None] * sot + d[None, :], mask=rows, other=0.0)
        delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
        lse = tl.load(LSE + (b * H + h) * T + i, mask=i < T, other=0.0)
        return q, do, delta, lse

    @triton.jit
    def _band_bias_grad_kernel(Q, K, V, O, DO, LSE, NB, DNB,
                               sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sob, soh, sot,
                               sdob, sdoh, sdot, B, H, T, b_per_prog, scale,
                               W: tl.constexpr, BM: tl.constexpr, D: tl.constexpr):
        """Only the bias gradient: one key tile t (0 the diagonal, 1 and 2 before it) of one block
        of queries of one head, its dS summed over b_per_prog batch rows. One accumulator and
        five tiles loaded per row leave room for pipelining (the dq kernel holds three)."""
        pid, h = tl.program_id(0), tl.program_id(1)
        t, split = tl.program_id(2) % 3, tl.program_id(2) // 3
        i = pid * BM + tl.arange(0, BM)
        acc = tl.zeros([BM, BM], tl.float32)
        unused_dq = tl.zeros([BM, D], tl.float32)
        for b in range(split * b_per_prog, tl.minimum(split * b_per_prog + b_per_prog, B)):
            q, do, delta, lse = _query_rows(Q, DO, O, LSE, b, h, i, sqb, sqh, sqt, sdob, sdoh,
                                            sdot, sob, soh, sot, H, T, D)
            ds, _ = _band_tile(q, do, lse, delta, unused_dq, i, K, V, b * skb + h * skh, skt,
                               b * svb + h * svh, svt, NB + h * W, pid * BM - t * BM, T, scale,
                               W, BM, D, False)
            acc += ds
        splits = tl.num_programs(2) // 3
        base = DNB + (((h * tl.num_programs(0) + pid) * splits + split) * 3 + t) * BM * BM
        tl.store(base + tl.arange(0, BM)[:, None] * BM + tl.arange(0, BM)[None, :], acc)

    @triton.jit
    def _band_dq_kernel(Q, K, V, O, DO, LSE, NB, DQ, DQF, DELTA, DNB,
                        sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sob, soh, sot,
                        sdob, sdoh, sdot, sdqb, sdqh, sdqt, sfb, sfh, sft,
                        B, H, T, b_per_prog, scale, W: tl.constexpr, BM: tl.constexpr,
                        D: tl.constexpr, COMPUTE_DQ: tl.constexpr, HAS_FAR: tl.constexpr):
        """One block of queries of one head over b_per_prog batch rows: dq (plus the far part's
        dq, shifted by W), D_i = dO_i . O_i for the dk/dv kernel, and the three dS tiles summed
        over the batch rows for the bias gradient."""
        pid, h, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        i = pid * BM + tl.arange(0, BM)
        d = tl.arange(0, D)
        rows = (i < T)[:, None]
        acc0 = tl.zeros([BM, BM], tl.float32)
        acc1 = tl.zeros([BM, BM], tl.float32)
        acc2 = tl.zeros([BM, BM], tl.float32)
        for b in range(split * b_per_prog, tl.minimum(split * b_per_prog + b_per_prog, B)):
            q, do, delta, lse = _query_rows(Q, DO, O, LSE, b, h, i, sqb, sqh, sqt, sdob, sdoh,
                                            sdot, sob, soh, sot, H, T, D)
            tl.store(DELTA + (b * H + h) * T + i, delta, mask=i < T)
            kb, vb = b * skb + h * skh, b * svb + h * svh
            dq = tl.zeros([BM, D], tl.float32)
            # the three key tiles one by one: their dS tiles have accumulators of their own
            ds, dq = _band_tile(q, do, lse, delta, dq, i, K, V, kb, skt, vb, svt, NB + h * W,
                                pid * BM, T, scale, W, BM, D, COMPUTE_DQ)
            acc0 += ds
            ds, dq = _band_tile(q, do, lse, delta, dq, i, K, V, kb, skt, vb, svt, NB + h * W,
                                pid * BM - BM, T, scale, W, BM, D, COMPUTE_DQ)
            acc1 += ds
            ds, dq = _band_tile(q, do, lse, delta, dq, i, K, V, kb, skt, vb, svt, NB + h * W,
                                pid * BM - 2 * BM, T, scale, W, BM, D, COMPUTE_DQ)
            acc2 += ds
            if COMPUTE_DQ:
                dq = dq * scale
                if HAS_FAR:  # the far part covers queries W.. (its row i - W)
                    dq += tl.load(DQF + b * sfb + h * sfh + (i[:, None] - W) * sft + d[None, :],
                                  mask=rows & (i >= W)[:, None], other=0.0).to(tl.float32)
                tl.store(DQ + b * sdqb + h * sdqh + i[:, None] * sdqt + d[None, :],
                         dq.to(DQ.dtype.element_ty), mask=rows)
        r, c = tl.arange(0, BM)[:, None], tl.arange(0, BM)[None, :]
        base = DNB + ((h * tl.num_programs(0) + pid) * tl.num_programs(2) + split) * 3 * BM * BM
        tl.store(base + r * BM + c, acc0)
        tl.store(base + BM * BM + r * BM + c, acc1)
        tl.store(base + 2 * BM * BM + r * BM + c, acc2)


def bht(x: Tensor) -> tuple[int, int, int]:
    """Batch, head and position strides of a (B, H, T, D) tensor."""
    return x.stride(0), x.stride(1), x.stride(2)


def last_dim_contiguous(*xs: Tensor) -> list[Tensor]:
    return [x if x.stride(-1) == 1 else x.contiguous() for x in xs]


def check_supported(q: Tensor, W: int) -> None:
    if triton is None:
        raise RuntimeError("the band kernels need Triton (it ships with CUDA PyTorch)")
    if not supports(q.shape[-1], W):
        raise ValueError(f"the band kernels need a power-of-two head size in 16..256 and "
                         f"max_distance a power of two >= 32; got {q.shape[-1]} and {W}")


def band_dq(q, k, v, out, lse, dout, near_bias, scale, dq_far, compute_dq, launch):
    """Runs the dq kernel with launch (num_warps, num_stages, programs) -> (dq or None,
    delta (B, H, T), dnb (H, W))."""
    B, H, T, D = q.shape
    W = near_bias.shape[1]
    BM = W // 2
    nblocks = triton.cdiv(T, BM)
    warps, stages, programs = launch
    splits, b_per_prog = _batch_splits(B, programs, nblocks * H)
    dq = torch.empty_like(q) if compute_dq else q.new_empty(0)
    delta = torch.empty(B, H, T, device=q.device, dtype=torch.float32)
    tiles = torch.empty(H, nblocks, splits, 3, BM, BM, device=q.device, dtype=torch.float32)
    far = dq_far if dq_far is not None else q
    _band_dq_kernel[(nblocks, H, splits)](
        q, k, v, out, dout, lse, near_bias.contiguous(), dq, far, delta, tiles,
        *bht(q), *bht(k), *bht(v), *bht(out), *bht(dout),
        *(bht(dq) if compute_dq else (0, 0, 0)), *bht(far), B, H, T, b_per_prog, scale,
        W=W, BM=BM, D=D, COMPUTE_DQ=compute_dq, HAS_FAR=dq_far is not None,
        num_warps=warps, num_stages=stages)
    return (dq if compute_dq else None), delta, _diagonal_sums(tiles.sum((1, 2)), W)


def _batch_splits(B: int, programs: int, per_split: int) -> tuple[int, int]:
    """Into how many parts to split the batch (and rows per part) for about `programs` programs
    (enough to fill the GPU; each sums its rows' dS tiles before writing them)."""
    splits = max(1, min(B, -(-programs // per_split)))
    b_per_prog = -(-B // splits)
    return -(-B // b_per_prog), b_per_prog


def _bias_grad_tiles(q, k, v, out, lse, dout, near_bias, scale, launch) -> Tensor:
    """dL/d near_bias (H, W) by _band_bias_grad_kernel, launch (num_warps, num_stages, programs)."""
    B, H, T, D = q.shape
    W = near_bias.shape[1]
    BM = W // 2
    nblocks = triton.cdiv(T, BM)
    warps, stages, programs = launch
    splits, b_per_prog = _batch_splits(B, programs, nblocks * H * 3)
    tiles = torch.empty(H, nblocks, splits, 3, BM, BM, device=q.device, dtype=torch.float32)
    _band_bias_grad_kernel[(nblocks, H, 3 * splits)](
        q, k, v, out, dout, lse, near_bias.contiguous(), tiles,
        *bht(q), *bht(k), *bht(v), *bht(out), *bht(dout), B, H, T, b_per_prog, scale,
        W=W, BM=BM, D=D, num_warps=warps, num_stages=stages)
    return _diagonal_sums(tiles.sum((1, 2)), W)


def _diagonal_sums(tiles: Tensor, W: int) -> Tensor:
    """(H, 3, BM, BM) dS summed per tile -> (H, W) by distance: tile t, element (r, c) is at
    distance t * BM + r - c (negative and >= W entries are zero by masking)."""
    H, _, BM, _ = tiles.shape
    t, r, c = torch.meshgrid(*(torch.arange(n, device=tiles.device) for n in (3, BM, BM)),
                             indexing="ij")
    index = (t * BM + r - c + BM).flatten()  # shifted to 0..4BM-2
    sums = tiles.new_zeros(H, 4 * BM).index_add_(1, index, tiles.flatten(1))
    return sums[:, BM:BM + W].contiguous()


@torch.library.custom_op("lamda::band_bias_grad", mutates_args=())
def band_bias_grad(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dout: Tensor,
                   near_bias: Tensor, scale: float, kernel: str, launch: list[int]) -> Tensor:
    """Only dL/d near_bias (H, W) of causal attention whose keys at distance d < W carry
    near_bias[:, d] (the flex backend's bias gradient; out and lse are the full attention's),
    by `kernel` "tiles" or "rows" (AttentionKernels.bias_grad) with launch (num_warps,
    num_stages, programs)."""
    check_supported(q, near_bias.shape[1])
    q, k, v, out, dout = last_dim_contiguous(q, k, v, out, dout)
    if kernel == "tiles":
        return _bias_grad_tiles(q, k, v, out, lse, dout, near_bias, scale, launch)
    return band_dq(q, k, v, out, lse, dout, near_bias, scale, None, False, launch)[2]


@band_bias_grad.register_fake
def _(q, k, v, out, lse, dout, near_bias, scale, kernel, launch):
    return torch.empty_like(near_bias)
