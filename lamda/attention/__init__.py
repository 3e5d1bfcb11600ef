"""Attention with T5 relative position bias: the bias (`bias`), the backend interface with the
reference `sdpa` and the `auto` choice (`backends`), and the CUDA backends `flex` (production
training, its bias gradient by the Triton kernels of `bias_grad`) and `band` (experimental:
correct, slower than flex), imported only when selected."""

from lamda.attention.backends import BACKEND_NAMES, AttentionBackend, get_backend
from lamda.attention.bias import RelativeBias, distance_bias, relative_position_bucket

__all__ = ["BACKEND_NAMES", "AttentionBackend", "RelativeBias", "distance_bias", "get_backend",
           "relative_position_bucket"]
