"""T5 relative position bias (paper §3: the decoder uses T5's relative attention bias): bucketed
distances, and the per-forward description of the bias a backend reads."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
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
