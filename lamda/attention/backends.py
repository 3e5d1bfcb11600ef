"""Attention with T5 relative position bias, behind a small backend interface.

The model describes the bias once per forward as a `RelativeBias` (the learned table plus the query
and key positions and masks). A backend turns that into whatever it needs once per forward
(`prepare`), then every layer calls it (`attend`). `sdpa` materialises the bias as a dense additive
mask for `F.scaled_dot_product_attention`: it is the reference path and works on CPU and GPU.
`flex` (lamda.attention.flex) reads the bias inside a FlexAttention kernel and computes the bias
gradient separately; it is for causal self-attention on CUDA (training). `band`
(lamda.attention.band) splits attention into a near band with the bias (Triton kernels) and a far
part without it (FlashAttention); it is correct but slower than `flex` at T = 1024
(bench/RESULTS.md). `auto`, the default, picks `flex` where it applies and `sdpa` everywhere else
(CPU, KV-cache decoding, padding masks, packed rows, dropout).
"""

from __future__ import annotations

import importlib
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from lamda.attention.bias import RelativeBias


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
        backend = get_backend("flex" if fast else "sdpa")
        return backend, backend.prepare(bias, dtype)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, prepared, dropout_p: float) -> Tensor:
        backend, inner = prepared
        return backend.attend(q, k, v, inner, dropout_p)


# the CUDA backends, imported when first asked for: (module, class)
CUDA_BACKENDS = {"flex": ("lamda.attention.flex", "FlexBackend"),
                 "band": ("lamda.attention.band", "BandBackend")}
BACKEND_NAMES = ("auto", "sdpa", *CUDA_BACKENDS)
_made: dict[str, AttentionBackend] = {"sdpa": SDPABackend(), "auto": AutoBackend()}


def register(name: str, backend: AttentionBackend) -> None:
    """Another backend (e.g. a benchmark's), selectable by `name` like the built-in ones."""
    _made[name] = backend


def get_backend(name: str, dropout: float = 0.0) -> AttentionBackend:
    """The backend called `name`; `auto` with attention dropout is `sdpa` (flex has no dropout)."""
    if name not in _made and name not in CUDA_BACKENDS:
        known = ", ".join(dict.fromkeys([*BACKEND_NAMES, *_made]))
        raise ValueError(f"unknown attention backend {name!r}; available: {known}")
    if name == "auto" and dropout > 0:
        name = "sdpa"
    if name not in _made:
        module, cls = CUDA_BACKENDS[name]
        _made[name] = getattr(importlib.import_module(module), cls)()
    return _made[name]
