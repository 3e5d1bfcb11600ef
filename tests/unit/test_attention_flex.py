"""The flex backend on CPU: the band bias gradient against autograd, the gradient plumbing, and
the real FlexAttention forward (CPU FlexAttention has no backward; tests/gpu runs the kernel's)."""

import pytest
import torch

from lamda.attention import flex as attention_flex
from lamda.attention import RelativeBias, get_backend, relative_position_bucket
from lamda.attention.flex import bias_grad_by_distance, distance_bias
from lamda.config import SM90_D128, AttentionKernels, ModelConfig
from lamda.model import build_model


def reference_attention(q, k, v, table, num_buckets, max_distance):
    """Causal attention with the materialised bucket bias, differentiable in everything."""
    T = q.shape[2]
    pos = torch.arange(T)
    bias = table[relative_position_bucket(pos[None] - pos[:, None], num_buckets, max_distance)]
    s = q @ k.transpose(-1, -2) + bias.permute(2, 0, 1)
    s = s.masked_fill(pos[None] > pos[:, None], float("-inf"))
    return torch.softmax(s, -1) @ v, torch.logsumexp(s, -1)


@pytest.mark.parametrize("T,num_buckets,max_distance", [
    (40, 8, 16),  # T not a multiple of the window, far distances present
    (10, 8, 16),  # shorter than the window: no far distances
    (64, 8, 16),  # whole blocks
    (200, 32, 128),  # the model's own bucketing
])
def test_band_gradient_equals_autograd(T, num_buckets, max_distance):
    g = torch.Generator().manual_seed(T)
    B, H, D = 2, 3, 8
    q, k, v, dout = (torch.randn(B, H, T, D, generator=g, dtype=torch.float64) for _ in range(4))
    table = torch.randn(num_buckets, H, generator=g, dtype=torch.float64, requires_grad=True)
    out, lse = reference_attention(q, k, v, table, num_buckets, max_distance)
    (want,) = torch.autograd.grad(out, table, dout)

    per_distance = bias_grad_by_distance(q, k, v, out.detach(), lse.detach(), dout,
                                         distance_bias(table, T, num_buckets, max_distance),
                                         max_distance)
    assert per_distance.shape == (H, T)
    (got,) = torch.autograd.grad(distance_bias(table, T, num_buckets, max_distance), table,
                                 per_distance)
    assert torch.allclose(got.double(), want, rtol=1e-4, atol=1e-5), (got - want).abs().max()


def test_model_gradients_through_the_flex_backend(monkeypatch):
    """The whole model with `flex` (kernel replaced by a plain differentiable one that, like the
    real kernel, sees the bias as a constant) has the same gradients as with `sdpa`."""
    def kernel(q, k, v, dist_bias, block_mask, options):
        T = q.shape[2]
        pos = torch.arange(T)
        dist = (pos[:, None] - pos[None]).clamp(0, dist_bias.shape[1] - 1)
        s = q @ k.transpose(-1, -2) + dist_bias[:, dist].to(q.dtype)
        s = s.masked_fill(pos[None] > pos[:, None], float("-inf"))
        return torch.softmax(s, -1) @ v, torch.logsumexp(s, -1)

    monkeypatch.setattr(attention_flex, "flex_with_lse", kernel)
    torch.manual_seed(0)
    cfg = ModelConfig.from_name("debug", rel_max_distance=16, rel_buckets=8)
    ref = build_model(cfg.replace(attn_backend="sdpa")).double()
    flex = build_model(cfg.replace(attn_backend="flex")).double()
    flex.load_state_dict(ref.state_dict())
    tokens = torch.randint(0, cfg.vocab_size, (2, 50))
    for m in (ref, flex):
        m(tokens).square().mean().backward()
    for (name, a), b in zip(ref.named_parameters(), flex.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-6, atol=1e-9), name
    assert flex.rel_bias.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("near_table", [True, False])
@pytest.mark.parametrize("max_distance", [16, 128])  # far keys read the clamped column / none
def test_real_flex_forward_matches_sdpa(near_table, max_distance):
    torch.manual_seed(0)
    cfg = ModelConfig.from_name("debug", rel_max_distance=max_distance, rel_buckets=8)
    ref = build_model(cfg.replace(attn_backend="sdpa")).eval()
    flex = build_model(cfg.replace(attn_backend="flex",
                                   attn_kernels=AttentionKernels(near_table=near_table))).eval()
    T = 100
    pos = torch.arange(T)
    bias = RelativeBias(flex.rel_bias.weight, pos, pos, None, 8, max_distance, self_attention=True)
    columns = min(T, max_distance + 1) if near_table else T  # the kernel setting reached the backend
    assert flex.backend.prepare(bias, torch.float32).dist_bias.shape[1] == columns
    flex.load_state_dict(ref.state_dict())
    tokens = torch.randint(0, cfg.vocab_size, (2, T))
    with torch.no_grad():
        assert torch.allclose(flex(tokens), ref(tokens), atol=1e-4)


def test_auto_picks_sdpa_off_cuda_and_with_dropout():
    bias = RelativeBias(torch.randn(32, 2), torch.arange(4), torch.arange(4), None, 32, 128,
                        self_attention=True)
    backend, _ = get_backend("auto").prepare(bias, torch.float32)
    assert backend is get_backend("sdpa")
    assert get_backend("auto", dropout=0.1) is get_backend("sdpa")


def test_flex_refuses_what_it_cannot_do():
    pos = torch.arange(4)
    cached = RelativeBias(torch.randn(32, 2), pos, pos, torch.ones(1, 4, dtype=torch.bool), 32, 128)
    with pytest.raises(ValueError, match="causal self-attention"):
        get_backend("flex").prepare(cached, torch.float32)
    with pytest.raises(ValueError, match="unknown attention backend"):
        get_backend("triton")


def test_kernel_options_apply_the_tuned_blocks_only_where_measured(monkeypatch):
    assert attention_flex.kernel_options(128, None) == {}  # no CUDA: FlexAttention's own choice
    monkeypatch.setattr(attention_flex, "_hopper", lambda: True)
    assert attention_flex.kernel_options(128, None) == SM90_D128
    assert attention_flex.kernel_options(64, None) == {}
    chosen = get_backend("flex", kernels=AttentionKernels(flex_options="bwd_num_warps=8")).options
    assert attention_flex.kernel_options(128, chosen) == {"bwd_num_warps": 8}
    assert attention_flex.kernel_options(128, get_backend("flex", kernels=AttentionKernels(
        flex_options="")).options) == {}
