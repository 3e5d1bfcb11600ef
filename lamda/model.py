"""The LaMDA decoder: pre-norm Transformer with T5 relative attention and gated-GELU.

Choices (the paper, "Model"):
- RMSNorm before attention and FFN (T5's LayerNorm without mean or bias), and once at the end.
- One learned relative-bias table [buckets, heads], shared by all layers, turned into a bias once
  per forward (lamda.attention).
- Gated-GELU FFN: wo(gelu(x wi_0) * (x wi_1)).
- Tied embeddings, as in the original T5 / Mesh TensorFlow decoder: the output layer reuses the
  token embedding, with the final hidden state scaled by d_model^-0.5 so logits start near unit scale.
- Optionally (`copy_dim` > 0; ours, not the paper's, used by the small CPU preset) a copy head:
  the output is a gated mixture of the output layer's distribution and a pointer over the tokens
  already in the context (`LaMDA._copy_mixture`), so that a name or number met once can be repeated.
- Initialisation as in Mesh TensorFlow / T5: embedding N(0, 1); q N(0, (d_model d_kv)^-0.5),
  k and v N(0, d_model^-0.5), o N(0, (H d_kv)^-0.5); wi N(0, d_model^-0.5), wo N(0, d_ff^-0.5);
  relative bias N(0, d_model^-0.5); norms 1. Attention scores are not scaled by 1/sqrt(d_kv):
  T5 folds that factor into q's initialisation.

Big presets are built on the meta device (`build_model(cfg, device="meta")`) and materialised
later (FSDP: `to_empty` then `init_weights`; serving: load a checkpoint with assign=True).
"""

from __future__ import annotations

import math

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
    conversations of different lengths can share a batch with left padding. With a copy head,
    `copy_k` (B, Hc, S, Dc) holds its keys and `ids` (B, S) the token at each position.
    `expand(n)` repeats each row n times: one prefilled context becomes n candidate rows without
    recomputing it (`select` picks rows in any order).
    """

    def __init__(self, k: list[Tensor], v: list[Tensor], key_mask: Tensor,
                 copy_k: Tensor | None = None, ids: Tensor | None = None):
        self.k, self.v, self.key_mask = k, v, key_mask
        self.copy_k, self.ids = copy_k, ids

    @classmethod
    def empty(cls, cfg: ModelConfig, batch: int, max_len: int | None = None, *,
              device=None, dtype=torch.float32, layer_devices: list | None = None) -> "KVCache":
        """A zeroed cache; `layer_devices` places each layer's part (default: all on `device`)."""
        S = max_len or cfg.max_seq_len
        shape = (batch, cfg.n_head, S, cfg.d_kv)
        devices = layer_devices or [device] * cfg.n_layer
        copy = cfg.copy_dim > 0
        return cls([torch.zeros(shape, device=d, dtype=dtype) for d in devices],
                   [torch.zeros(shape, device=d, dtype=dtype) for d in devices],
                   torch.ones(batch, S, device=device, dtype=torch.bool),
                   torch.zeros(batch, cfg.copy_heads, S, cfg.copy_dim, device=device, dtype=dtype)
                   if copy else None,
                   torch.zeros(batch, S, device=device, dtype=torch.long) if copy else None)

    @property
    def batch(self) -> int:
        return self.key_mask.shape[0]

    @property
    def max_len(self) -> int:
        return self.key_mask.shape[1]

    def parts(self) -> list[tuple[Tensor, int]]:
        """Every tensor of the cache with the index of its sequence dimension (rows are dim 0)."""
        four = self.k + self.v + ([self.copy_k] if self.copy_k is not None else [])
        two = [self.key_mask] + ([self.ids] if self.ids is not None else [])
        return [(t, 2) for t in four] + [(t, 1) for t in two]

    def map(self, f, *others: "KVCache") -> "KVCache":
        """A new cache of f(tensor, *the same tensor of `others`, seq_dim) for every part."""
        n = len(self.k)
        columns = zip(self.parts(), *(o.parts() for o in others))  # ((t, d), (t', d'), ...)
        out = [f(t, *(o for o, _ in rest), d) for (t, d), *rest in columns]
        copy = self.copy_k is not None
        return KVCache(out[:n], out[n:2 * n], out[2 * n + copy],
                       out[2 * n] if copy else None, out[-1] if copy else None)

    def update(self, layer: int, input_pos: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v (B, H, T, D) at `input_pos`, (T,) or per row (B, T); return the layer's
        whole cache."""
        return _write(self.k[layer], input_pos, k), _write(self.v[layer], input_pos, v)

    def update_copy(self, input_pos: Tensor, tokens: Tensor, keys: Tensor) -> tuple[Tensor, Tensor]:
        """Write the tokens (B, T) and copy keys (B, Hc, T, Dc) at `input_pos`; return all of them
        ((B, S) and (B, Hc, S, Dc))."""
        input_pos = input_pos.to(self.ids.device)
        if input_pos.dim() == 1:
            self.ids[:, input_pos] = tokens
        else:
            self.ids.scatter_(1, input_pos, tokens)
        return self.ids, _write(self.copy_k, input_pos, keys)

    def select(self, rows: Tensor | list[int]) -> "KVCache":
        """The given rows (indices, repeats allowed), copied."""
        idx = torch.as_tensor(rows, device=self.key_mask.device)
        return self.map(lambda t, _: t.index_select(0, idx.to(t.device)))

    def expand(self, n: int | Tensor) -> "KVCache":
        """Each row repeated n times, consecutively: row b becomes rows b*n .. b*n+n-1 (or row b
        n[b] times, for a tensor `n` of counts per row)."""
        return self.map(lambda t, _: t.repeat_interleave(n, dim=0))


def _write(cache: Tensor, input_pos: Tensor, new: Tensor) -> Tensor:
    """Write new (B, H, T, D) into cache (B, H, S, D) at `input_pos`, (T,) or per row (B, T)."""
    input_pos = input_pos.to(cache.device)
    if input_pos.dim() == 1:
        cache.index_copy_(2, input_pos, new)
    else:
        cache.scatter_(2, input_pos[:, None, :, None].expand_as(new), new)
    return cache


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
        if cfg.copy_dim:
            width = cfg.copy_heads * cfg.copy_dim
            self.copy_q = nn.Linear(cfg.d_model, width, bias=False)
            self.copy_k = nn.Linear(cfg.d_model, width, bias=False)
            self.copy_gate = nn.Linear(cfg.d_model, 1 + cfg.copy_heads)  # generator, each head
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
        if c.copy_dim:
            nn.init.normal_(self.copy_q.weight, std=c.d_model ** -0.5)
            nn.init.normal_(self.copy_k.weight, std=c.d_model ** -0.5)
            nn.init.zeros_(self.copy_gate.weight)
            nn.init.zeros_(self.copy_gate.bias)  # (the generator's weight is offset in forward)

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
        if self.cfg.copy_dim:
            return self._copy_mixture(self.norm(x).to(self.embed.weight.device), tokens, bias,
                                      cache, input_pos, only)
        if only is not None:
            x = x[only]  # (N, C)
        return self._vocab_logits(self.norm(x))  # (B, T, V) or (N, V)

    def _vocab_logits(self, h: Tensor) -> Tensor:
        """The tied output layer: final normed hidden states (..., C) -> logits (..., V)."""
        w = self.embed.weight
        return (h * self.cfg.d_model ** -0.5).to(w.device) @ w.t()  # .to: layers may span devices

    def _copy_mixture(self, h: Tensor, tokens: Tensor, bias: RelativeBias, cache: KVCache | None,
                      input_pos: Tensor | None, only: Tensor | None) -> Tensor:
        """Log-probabilities (B, T, V) or (N, V) of a pointer-sentinel mixture (Merity et al. 2016,
        "Pointer Sentinel Mixture Models", with several pointer heads): w_0 p_vocab + sum_h w_h
        p_h, where head h's attention over the earlier positions (those attention may see) puts
        its mass on the tokens standing there, and the weights w come from the hidden state. A
        name or number seen once in the context is then as easy to repeat as a frequent word,
        which the output layer alone learns slowly. Returned as log-probabilities, which
        sampling, ranking and the cross-entropy loss read like logits.

        h (B, T, C): the final normed hidden states; tokens (B, T) the inputs.
        """
        B, T, _ = h.shape
        Hc, Dc = self.cfg.copy_heads, self.cfg.copy_dim
        keys = self.copy_k(h).view(B, T, Hc, Dc).transpose(1, 2)  # (B, Hc, T, Dc)
        if cache is not None:
            ids, keys = cache.update_copy(input_pos, tokens, keys)  # (B, S), (B, Hc, S, Dc)
        else:
            ids = tokens
        q = self.copy_q(h).view(B, T, Hc, Dc).transpose(1, 2)  # (B, Hc, T, Dc)
        scores = (q @ keys.transpose(2, 3)).float() * Dc ** -0.5  # (B, Hc, T, S)
        attn = scores.masked_fill(~bias.allowed(), float("-inf")).softmax(-1)
        g = self.copy_gate(h).float()  # (B, T, 1 + Hc)
        prior = 2.0 + math.log(Hc)  # the generator starts at 88%, the heads share 12%
        mix = torch.cat([g[..., :1] + prior, g[..., 1:]], -1).softmax(-1)
        attn = (attn * mix[..., 1:].transpose(1, 2)[..., None]).sum(1)  # (B, T, S): heads weighted
        ids = ids[:, None].expand_as(attn)
        if only is not None:
            h, attn, ids, mix = h[only], attn[only], ids[only], mix[only]  # (N, ...)
        p_vocab = self._vocab_logits(h).float().softmax(-1)  # (..., V)
        p = (mix[..., :1] * p_vocab).scatter_add_(-1, ids, attn)
        return p.clamp_min(torch.finfo(p.dtype).tiny).log()


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
