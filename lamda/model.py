"""The LaMDA decoder: pre-norm Transformer with T5 relative attention and gated-GELU.

Choices (the paper, "Model"):
- RMSNorm before attention and FFN (T5's LayerNorm without mean or bias), and once at the end.
- One learned relative-bias table [buckets, heads], shared by all layers, turned into a bias once
  per forward (lamda.attention).
- Gated-GELU FFN: wo(gelu(x wi_0) * (x wi_1)).
- Tied embeddings, as in the original T5 / Mesh TensorFlow decoder: the output layer reuses the
  token embedding, with the final hidden state scaled by d_model^-0.5 so logits start near unit scale.
- Initialisation as in Mesh TensorFlow / T5: embedding N(0, 1); q N(0, (d_model d_kv)^-0.5),
  k and v N(0, d_model^-0.5), o N(0, (H d_kv)^-0.5); wi N(0, d_model^-0.5), wo N(0, d_ff^-0.5);
  relative bias N(0, d_model^-0.5); norms 1. Attention scores are not scaled by 1/sqrt(d_kv):
  T5 folds that factor into q's initialisation.

Big presets are built on the meta device (`build_model(cfg, device="meta")`) and materialised
later (FSDP: `to_empty` then `init_weights`; serving: load a checkpoint with assign=True).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.distributed.tensor import DTensor

from lamda.attention import RelativeBias, get_backend
from lamda.config import ModelConfig


class KVCache:
    """Preallocated keys and values of every layer for incremental decoding.

    k[layer], v[layer]: (B, H, S, D), each on its layer's device (a model dispatched across GPUs
    keeps each layer's cache next to it). `key_mask` (B, S) marks valid (non-padding) positions, so
    conversations of different lengths can share a batch with left padding. `expand(n)` repeats
    each row n times: one prefilled context becomes n candidate rows without recomputing it
    (`select` picks rows in any order).
    """

    def __init__(self, k: list[Tensor], v: list[Tensor], key_mask: Tensor):
        self.k, self.v, self.key_mask = k, v, key_mask

    @classmethod
    def empty(cls, cfg: ModelConfig, batch: int, max_len: int | None = None, *,
              device=None, dtype=torch.float32, layer_devices: list | None = None) -> "KVCache":
        """A zeroed cache; `layer_devices` places each layer's part (default: all on `device`)."""
        S = max_len or cfg.max_seq_len
        shape = (batch, cfg.n_head, S, cfg.d_kv)
        devices = layer_devices or [device] * cfg.n_layer
        return cls([torch.zeros(shape, device=d, dtype=dtype) for d in devices],
                   [torch.zeros(shape, device=d, dtype=dtype) for d in devices],
                   torch.ones(batch, S, device=device, dtype=torch.bool))

    @property
    def batch(self) -> int:
        return self.key_mask.shape[0]

    @property
    def max_len(self) -> int:
        return self.key_mask.shape[1]

    def update(self, layer: int, input_pos: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v (B, H, T, D) at `input_pos`, (T,) or per row (B, T); return the layer's
        whole cache."""
        ck, cv = self.k[layer], self.v[layer]
        input_pos = input_pos.to(ck.device)
        if input_pos.dim() == 1:
            ck.index_copy_(2, input_pos, k)
            cv.index_copy_(2, input_pos, v)
        else:
            idx = input_pos[:, None, :, None].expand_as(k)  # (B, H, T, D)
            ck.scatter_(2, idx, k)
            cv.scatter_(2, idx, v)
        return ck, cv

    def select(self, rows: Tensor | list[int]) -> "KVCache":
        """The given rows (indices, repeats allowed), copied."""
        idx = torch.as_tensor(rows, device=self.key_mask.device)
        return KVCache([k.index_select(0, idx.to(k.device)) for k in self.k],
                       [v.index_select(0, idx.to(v.device)) for v in self.v],
                       self.key_mask.index_select(0, idx))

    def expand(self, n: int | Tensor) -> "KVCache":
        """Each row repeated n times, consecutively: row b becomes rows b*n .. b*n+n-1 (or row b
        n[b] times, for a tensor `n` of counts per row)."""
        return KVCache([k.repeat_interleave(n, dim=0) for k in self.k],
                       [v.repeat_interleave(n, dim=0) for v in self.v],
                       self.key_mask.repeat_interleave(n, dim=0))


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        self.q = nn.Linear(cfg.d_model, cfg.d_attn, bias=False)
        self.k = nn.Linear(cfg.d_model, cfg.d_attn, bias=False)
        self.v = nn.Linear(cfg.d_model, cfg.d_attn, bias=False)
        self.o = nn.Linear(cfg.d_attn, cfg.d_model, bias=False)
        self.backend = get_backend(cfg.attn_backend, cfg.dropout, cfg.attn_kernels)

    def forward(self, x: Tensor, prepared_bias, cache: KVCache | None = None,
                input_pos: Tensor | None = None) -> Tensor:
        B, T, _ = x.shape
        D = self.cfg.d_kv  # heads: all of them, or this rank's under tensor parallelism
        q = self.q(x).view(B, T, -1, D).transpose(1, 2)  # (B, H, T, D)
        k = self.k(x).view(B, T, -1, D).transpose(1, 2)
        v = self.v(x).view(B, T, -1, D).transpose(1, 2)
        if cache is not None:
            k, v = cache.update(self.layer, input_pos, k, v)  # (B, H, S, D)
        p = self.cfg.dropout if self.training else 0.0
        y = self.backend.attend(q, k, v, prepared_bias, p)  # (B, H, T, D)
        return self.o(y.transpose(1, 2).reshape(B, T, -1))


class GatedGELU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.wi_0 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wi_1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wo = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.wo(F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.ffn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.ffn = GatedGELU(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, prepared_bias, cache: KVCache | None = None,
                input_pos: Tensor | None = None) -> Tensor:
        x = x + self.drop(self.attn(self.attn_norm(x), prepared_bias, cache, input_pos))
        return x + self.drop(self.ffn(self.ffn_norm(x)))


class LaMDA(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)  # also the output layer (tied)
        self.rel_bias = nn.Embedding(cfg.rel_buckets, cfg.n_head)  # one table for all layers
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout)
        self.backend = get_backend(cfg.attn_backend, cfg.dropout, cfg.attn_kernels)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Mesh TensorFlow / T5 initialisation (see the module docstring)."""
        c = self.cfg
        nn.init.normal_(self.embed.weight, std=1.0)
        nn.init.normal_(self.rel_bias.weight, std=c.d_model ** -0.5)
        for block in self.blocks:
            a, f = block.attn, block.ffn
            nn.init.normal_(a.q.weight, std=(c.d_model * c.d_kv) ** -0.5)
            nn.init.normal_(a.k.weight, std=c.d_model ** -0.5)
            nn.init.normal_(a.v.weight, std=c.d_model ** -0.5)
            nn.init.normal_(a.o.weight, std=c.d_attn ** -0.5)
            nn.init.normal_(f.wi_0.weight, std=c.d_model ** -0.5)
            nn.init.normal_(f.wi_1.weight, std=c.d_model ** -0.5)
            nn.init.normal_(f.wo.weight, std=c.d_ff ** -0.5)
            nn.init.ones_(block.attn_norm.weight)
            nn.init.ones_(block.ffn_norm.weight)
        nn.init.ones_(self.norm.weight)

    def forward(self, tokens: Tensor, input_pos: Tensor | None = None, cache: KVCache | None = None,
                key_mask: Tensor | None = None, segments: Tensor | None = None,
                only: Tensor | None = None) -> Tensor:
        """tokens (B, T) -> logits (B, T, V), or (N, V) at the N positions where `only` (B, T)
        is True (fine-tuning computes the output layer just where there is a loss).

        Without a cache, tokens sit at positions 0..T-1. With a cache, `input_pos` gives their
        absolute positions, (T,) for all rows or (B, T) per row; keys are the whole cache.
        `key_mask` (B, T) marks padding tokens (False) so they are never attended to; with a cache
        it is stored there for later steps (only with (T,) positions). `segments` (B, T) numbers
        the examples packed into a row (lamda.data.pack_examples): a token attends only within its
        own example, which the relative bias then sees exactly as if it stood alone.
        """
        B, T = tokens.shape
        if cache is None:
            q_pos = torch.arange(T, device=tokens.device)
            k_pos = q_pos
        else:
            if input_pos is None:
                raise ValueError("input_pos is required with a KV cache")
            if key_mask is not None:
                cache.key_mask[:, input_pos] = key_mask
            q_pos = input_pos
            k_pos = torch.arange(cache.max_len, device=tokens.device)
            key_mask = cache.key_mask
        x = self.drop(self.embed(tokens))  # (B, T, C)
        table = self.rel_bias.weight  # (buckets, H); this rank's heads under tensor parallelism
        table = table.to_local() if isinstance(table, DTensor) else table
        bias = RelativeBias(table, q_pos, k_pos, key_mask,
                            self.cfg.rel_buckets, self.cfg.rel_max_distance,
                            self_attention=cache is None, segments=segments)
        prepared = self.backend.prepare(bias, x.dtype)  # once per forward, shared by all layers
        for block in self.blocks:
            x = block(x, prepared, cache, input_pos)
        if only is not None:
            x = x[only]  # (N, C)
        x = self.norm(x) * self.cfg.d_model ** -0.5
        w = self.embed.weight
        return x.to(w.device) @ w.t()  # (B, T, V) or (N, V); .to: a no-op unless layers span devices


def layer_devices(model: LaMDA) -> list[torch.device]:
    """The device of each block (they differ when a model is dispatched across GPUs)."""
    return [next(b.parameters()).device for b in model.blocks]


def build_model(cfg: ModelConfig, device: str | torch.device | None = None) -> LaMDA:
    """The model on `device`; "meta" allocates nothing (for big presets, FSDP and loading)."""
    with torch.device(device or "cpu"):
        return LaMDA(cfg)


def lm_loss(logits: Tensor, targets: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean next-token cross-entropy over the tokens where `mask` (B, T) is nonzero.

    logits (B, T, V), targets (B, T) (or (N, V) and (N,)). Without a mask every token counts.
    """
    losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                             reduction="none")
    if mask is None:
        return losses.sum() / max(1, losses.numel())
    mask = mask.flatten().to(losses.dtype)
    return (losses * mask).sum() / mask.sum().clamp(min=1.0)
