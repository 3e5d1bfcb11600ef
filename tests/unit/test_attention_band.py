"""The band backend's Triton kernels on CPU (Triton's interpreter; tests/conftest.py turns it on
without CUDA) against a float64 reference: outputs and every gradient, the bias table's included."""

import pytest
import torch

pytest.importorskip("triton")

from lamda.attention import band as attention_band, bias_grad  # noqa: E402
from lamda.attention import RelativeBias, distance_bias  # noqa: E402
from lamda.attention.flex import band_gradient  # noqa: E402
from lamda.config import DEFAULT_LAUNCH, AttentionKernels, ModelConfig  # noqa: E402
from lamda.model import build_model  # noqa: E402
from tests.unit.test_attention_flex import reference_attention  # noqa: E402

B, H, D, BUCKETS, W = 2, 3, 16, 8, 32


def reference(q, k, v, table):
    """Causal attention with the materialised bucket bias -> (out, lse), differentiable."""
    return reference_attention(q, k, v, table, BUCKETS, W)


def inputs(T, seed):
    """(q, k, v, dout) (B, H, T, D) float32 and a bias table."""
    g = torch.Generator().manual_seed(seed)
    q, k, v, dout = (torch.randn(B, H, T, D, generator=g) for _ in range(4))
    return [q * 0.5, k, v, dout], torch.randn(BUCKETS, H, generator=g)


def grads(fn, q, k, v, table, dout):
    q, k, v, table = (x.detach().clone().requires_grad_() for x in (q, k, v, table))
    out = fn(q, k, v, table)
    out.backward(dout.to(out.dtype))
    return [x.double() for x in (out, q.grad, k.grad, v.grad, table.grad)]


def band(q, k, v, table):
    pos = torch.arange(q.shape[2])
    bias = RelativeBias(table, pos, pos, None, BUCKETS, W, self_attention=True)
    return attention_band.band_attention(q, k, v, attention_band.near_bias(bias))


@pytest.mark.parametrize("T", [
    10,  # shorter than one block: the band only
    32,  # exactly the window: still no far part
    33,  # one far key
    100,  # not a multiple of the block
    128,  # whole blocks
])
def test_band_attention_matches_float64(T):
    (q, k, v, dout), table = inputs(T, T)
    want = grads(lambda *a: reference(*a)[0], *(x.double() for x in (q, k, v, table)), dout.double())
    got = grads(band, q, k, v, table, dout)
    for name, a, b in zip(["out", "dq", "dk", "dv", "dtable"], got, want):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4), (name, (a - b).abs().max())


def test_band_attention_half_precision_and_strided_inputs():
    """float16 inputs laid out (B, T, H, D) as the model's projections give them."""
    (q, k, v, dout), table = inputs(80, 1)
    want = grads(lambda *a: reference(*a)[0], *(x.double() for x in (q, k, v, table)), dout.double())
    strided = [x.transpose(1, 2).contiguous().transpose(1, 2).half() for x in (q, k, v)]
    assert not strided[0].is_contiguous()
    got = grads(band, *strided, table, dout)
    for name, a, b in zip(["out", "dq", "dk", "dv", "dtable"], got, want):
        err = ((a - b).norm() / b.norm()).item()
        assert err < 3e-3, (name, err)


@pytest.mark.parametrize("near_table", [True, False])
@pytest.mark.parametrize("kernel", ["rows", "tiles"])
@pytest.mark.parametrize("T", [20, 100])
def test_kernel_bias_gradient_equals_the_torch_band_gradient(T, kernel, near_table):
    """The flex backend's bias gradient on CUDA (either Triton kernel) against its torch
    version, for a bias table by distance over 0..W (the flex backend's) or 0..T-1."""
    # T 20: one program sums both batch rows; T 100: one row per program
    launch = (4, 2, 1 if T == 20 else 10**4) if kernel == "tiles" else DEFAULT_LAUNCH["bias_grad"]
    (q, k, v, dout), table = inputs(T, 7)
    out, lse = (x.float() for x in reference(*(x.double() for x in (q, k, v, table))))
    columns = min(T, W + 1) if near_table else T
    dist = distance_bias(table, columns, BUCKETS, W)
    want = band_gradient(q, k, v, out, lse, dout, dist, W, use_kernel=False)
    got = band_gradient(q, k, v, out, lse, dout, dist, W, (kernel, launch), use_kernel=True)
    assert got.shape == want.shape == (H, columns)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)


def test_custom_ops_fake_kernels_agree():
    (q, k, v, dout), table = inputs(70, 3)
    near = torch.randn(H, W)
    settings = attention_band.BandSettings.of(AttentionKernels())
    torch.library.opcheck(attention_band.band_attention_fwd, (q, k, v, near, 1.0, [*settings.fwd]))
    out, lse = attention_band.band_attention_fwd(q, k, v, near, 1.0, [*settings.fwd])
    torch.library.opcheck(attention_band.band_attention_bwd,
                          (q, k, v, out, lse, dout, near, 1.0, None, None, None,
                           [*settings.dq], [*settings.dkdv]))
    torch.library.opcheck(bias_grad.band_bias_grad,
                          (q, k, v, out, lse, dout, near, 1.0, "tiles",
                           [*DEFAULT_LAUNCH["bias_grad_tiles"]]))


def test_compiled_model_gradients_through_the_band_backend():
    torch.manual_seed(0)
    cfg = ModelConfig.from_name("debug", rel_max_distance=W, rel_buckets=BUCKETS)
    ref = build_model(cfg.replace(attn_backend="sdpa")).double()
    fast = build_model(cfg.replace(attn_backend="band"))
    fast.load_state_dict(ref.state_dict())
    tokens = torch.randint(0, cfg.vocab_size, (2, 90))
    for m in (ref, torch.compile(fast)):
        m(tokens).square().mean().backward()
    for (name, a), b in zip(ref.named_parameters(), fast.parameters()):
        assert ((a.grad - b.grad.double()).norm() / a.grad.norm()).item() < 1e-5, name
    assert fast.rel_bias.weight.grad.abs().sum() > 0


def test_unsupported_shapes_are_refused_clearly():
    assert bias_grad.supports(128, 128) and not bias_grad.supports(96, 128)
    assert not bias_grad.supports(64, 16)
    with pytest.raises(ValueError, match="power-of-two head size"):
        attention_band.band_attention_fwd(torch.randn(1, 1, 8, 24), torch.randn(1, 1, 8, 24),
                                          torch.randn(1, 1, 8, 24), torch.randn(1, 32), 1.0, [4, 2])
