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
(CPU, KV-cache decoding, padding masks, packed rows, dropout). How the CUDA kernels run
(block sizes, launch settings, which bias-gradient kernel) is an `AttentionKernels` of the model
config, handed to the backend when it is made.
"""

from __future__ import annotations

import importlib
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from lamda.attention.bias import RelativeBias
from lamda.config import AttentionKernels


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

    def __init__(self, kernels: AttentionKernels):
        self.kernels = kernels
        self.sdpa: AttentionBackend = get_backend("sdpa")
        self.flex: AttentionBackend | None = None  # made on first use (imports the CUDA code)

    def prepare(self, bias: RelativeBias, dtype: torch.dtype) -> tuple[AttentionBackend, object]:
        fast = (bias.table.is_cuda and bias.self_attention and bias.key_mask is None
                and bias.segments is None)
        if fast and self.flex is None:
            self.flex = get_backend("flex", kernels=self.kernels)
        backend = self.flex if fast else self.sdpa
        return backend, backend.prepare(bias, dtype)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, prepared, dropout_p: float) -> Tensor:
        backend, inner = prepared
        return backend.attend(q, k, v, inner, dropout_p)


# the CUDA backends, imported when first asked for: (module, class taking AttentionKernels)
CUDA_BACKENDS = {"flex": ("lamda.attention.flex", "FlexBackend"),
                 "band": ("lamda.attention.band", "BandBackend")}
BACKEND_NAMES = ("auto", "sdpa", *CUDA_BACKENDS)
_registered: dict[str, AttentionBackend] = {}
_made: dict[tuple[str, AttentionKernels | None], AttentionBackend] = {}


def register(name: str, backend: AttentionBackend) -> None:
    """Another backend (e.g. a benchmark's), selectable by `name` like the built-in ones."""
    _registered[name] = backend


def get_backend(name: str, dropout: float = 0.0,
                kernels: AttentionKernels = AttentionKernels()) -> AttentionBackend:
    """The backend called `name`, made once per kernel settings; `auto` with attention dropout
    is `sdpa` (flex has no dropout)."""
    if name in _registered:
        return _registered[name]
    if name not in BACKEND_NAMES:
        known = ", ".join([*BACKEND_NAMES, *_registered])
        raise ValueError(f"unknown attention backend {name!r}; available: {known}")
    if name == "auto" and dropout > 0:
        name = "sdpa"
    key = (name, None if name == "sdpa" else kernels)  # sdpa runs no kernel of ours
    if key not in _made:
        if name == "sdpa":
            _made[key] = SDPABackend()
        elif name == "auto":
            _made[key] = AutoBackend(kernels)
        else:
            module, cls = CUDA_BACKENDS[name]
            _made[key] = getattr(importlib.import_module(module), cls)(kernels)
    return _made[key]
