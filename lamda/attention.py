"""Attention with T5 relative position bias, behind a small backend interface.

The model describes the bias once per forward as a `RelativeBias` (the learned table plus the query
and key positions and masks). A backend turns that into whatever it needs once per forward
(`prepare`), then every layer calls it (`attend`). `sdpa` materialises the bias as a dense additive
mask for `F.scaled_dot_product_attention`: it is the reference path and works on CPU and GPU.
`flex` (lamda.attention_flex) reads the bias inside a FlexAttention kernel and computes the bias
gradient separately; it is for causal self-attention on CUDA (training). `band`
(lamda.attention_band) splits attention into a near band with the bias (Triton kernels) and a far
part without it (FlashAttention); it is correct but slower than `flex` at T = 1024
(bench/RESULTS.md). `auto`, the default, picks `flex` where it applies and `sdpa` everywhere else
(CPU, KV-cache decoding, padding masks, packed rows, dropout).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor


def relative_position_bucket(relative_position: Tensor, num_buckets: int = 32,
                             max_distance: int = 128) -> Tensor:
    """T5's unidirectional bucketing of `relative_position = key_pos - query_pos`.

    Keys in the future (relative_position > 0) fall in bucket 0 with distance 0 (they are masked
    anyway). Distances below num_buckets // 2 get a bucket each; larger ones share
    logarithmically wider buckets up to `max_distance`, beyond which all share the last bucket.
    """
    n = torch.clamp(-relative_position, min=0)  # distance into the past
    max_exact = num_buckets // 2
    is_small = n < max_exact
    # n >= max_exact here where it is used; clamp keeps log() finite elsewhere
    scaled = torch.log(n.clamp(min=max_exact).float() / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (scaled * (num_buckets - max_exact)).to(torch.long)
    large = torch.clamp(large, max=num_buckets - 1)
    return torch.where(is_small, n, large)


def distance_bias(table: Tensor, T: int, num_buckets: int, max_distance: int) -> Tensor:
    """(H, T) float32: the bias at each distance d = 0..T-1 (a gather from the table, so its
    gradient flows back to the table)."""
    d = torch.arange(T, device=table.device)
    return table[relative_position_bucket(-d, num_buckets, max_distance)].t().float().contiguous()


@dataclass
class RelativeBias:
    """Everything a backend needs to apply the learned bias and the causal / padding masks."""

    table: Tensor  # (num_buckets, H) learned bias, shared by all layers
    q_pos: Tensor  # (Tq,) absolute query positions, or (B, Tq) when rows differ
    k_pos: Tensor  # (Tk,) absolute positions of the keys
    key_mask: Tensor | None  # (B, Tk) bool, False for padding keys; None: all valid
    num_buckets: int
    max_distance: int
    self_attention: bool = False  # queries and keys are the same positions 0..T-1 (no cache)
    segments: Tensor | None = None  # (B, T) example of each token in a packed row (self-attention)

    def _rel(self) -> Tensor:
        """(Bq, Tq, Tk) key_pos - query_pos, Bq = 1 or B."""
        q = self.q_pos if self.q_pos.dim() == 2 else self.q_pos[None]
        return self.k_pos[None, None, :] - q[:, :, None]

    def buckets(self) -> Tensor:
        """(Bq, Tq, Tk) bucket index of every query/key pair."""
        return relative_position_bucket(self._rel(), self.num_buckets, self.max_distance)

    def allowed(self) -> Tensor:
        """(B or 1, 1, Tq, Tk) bool: causal, not padding, within the query's own example of a
        packed row. A query always sees its own position, so no row is empty (padding queries give
        finite garbage, never NaN)."""
        rel = self._rel()
        ok = rel <= 0  # (Bq, Tq, Tk) causal
        if self.key_mask is not None:
            ok = ok & (self.key_mask[:, None, :] | (rel == 0))
        if self.segments is not None:
            ok = ok & (self.segments[:, :, None] == self.segments[:, None, :])
        return ok[:, None]

    def materialize(self, dtype: torch.dtype) -> Tensor:
        """(B or 1, H, Tq, Tk) additive bias with -inf where attention is not allowed."""
        bias = self.table[self.buckets()].permute(0, 3, 1, 2).to(dtype)  # (Bq, H, Tq, Tk)
        return bias.masked_fill(~self.allowed(), float("-inf"))


class AttentionBackend(Protocol):
    def prepare(self, bias: RelativeBias, dtype: torch.dtype) -> object:
        """Called once per forward; the result is passed to every layer's `attend`."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor, prepared: object, dropout_p: float) -> Tensor:
        """q (B, H, Tq, D), k and v (B, H, Tk, D) -> (B, H, Tq, D). No 1/sqrt(D) scaling (T5)."""


class SDPABackend:
    """Reference backend: dense materialised bias + torch's scaled_dot_product_attention."""

    def prepare(self, bias: RelativeBias, dtype: torch.dtype) -> Tensor:
        return bias.materialize(dtype)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, prepared: Tensor, dropout_p: float) -> Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=prepared, dropout_p=dropout_p,
                                              scale=1.0)


class AutoBackend:
    """`flex` for causal self-attention without padding on CUDA, `sdpa` otherwise."""

    def prepare(self, bias: RelativeBias, dtype: torch.dtype) -> tuple[AttentionBackend, object]:
        fast = (bias.table.is_cuda and bias.self_attention and bias.key_mask is None
                and bias.segments is None)
        backend = BACKENDS["flex" if fast else "sdpa"]
        return backend, backend.prepare(bias, dtype)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, prepared, dropout_p: float) -> Tensor:
        backend, inner = prepared
        return backend.attend(q, k, v, inner, dropout_p)


BACKENDS: dict[str, AttentionBackend] = {"sdpa": SDPABackend(), "auto": AutoBackend()}


def get_backend(name: str, dropout: float = 0.0) -> AttentionBackend:
    """The backend called `name`; `auto` with attention dropout is `sdpa` (flex has no dropout)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; available: {', '.join(BACKENDS)}")
    if name == "auto" and dropout > 0:
        name = "sdpa"
    return BACKENDS[name]


# the CUDA backends register themselves; they build on the classes above
import lamda.attention_band  # noqa: E402,F401  ("band")
import lamda.attention_flex  # noqa: E402,F401  ("flex")
