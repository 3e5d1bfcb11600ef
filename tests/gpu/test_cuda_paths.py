"""The CUDA-only fast paths against their references: the flex and band attention backends (forward
and every gradient, the bias table's included), CUDA-graph decoding and the decode engine (and
how often its step waits for the GPU)."""

import warnings
from concurrent.futures import Future

import pytest
import torch

from bench.decode import BenchTokenizer
from lamda.attention import RelativeBias, get_backend
from lamda.config import AttentionKernels, ModelConfig
from lamda.decode import EagerStep, GraphStep, SamplingConfig, generate
from lamda.engine import DecodeEngine, _Request
from lamda.model import build_model
from lamda.rank import score_generation
from tests.unit.test_decode import EarlyStopper
from tests.unit.test_engine import alone, key, prompt, wait_steps


def rel_err(x, ref):
    return ((x.double() - ref).norm() / ref.norm()).item()


def attention_grads(backend, q, k, v, table, dout, dtype, kernels=AttentionKernels()):
    q, k, v = (x.detach().to(dtype).requires_grad_() for x in (q, k, v))
    table = table.detach().clone().requires_grad_()
    T = q.shape[2]
    pos = torch.arange(T, device=q.device)
    bias = RelativeBias(table, pos, pos, None, 32, 128, self_attention=True)
    be = get_backend(backend, kernels=kernels)
    out = be.attend(q, k, v, be.prepare(bias, dtype), 0.0)
    out.backward(dout.to(dtype))
    return out, q.grad, k.grad, v.grad, table.grad


@pytest.mark.parametrize("backend", ["flex:rows", "flex:tiles", "band"])
@pytest.mark.parametrize("T,D", [(1024, 128), (300, 64)])
def test_fast_backend_matches_float64_reference(backend, T, D):
    backend, _, bias_grad = backend.partition(":")  # flex's bias-gradient kernel
    kernels = AttentionKernels(bias_grad=bias_grad or "tiles")
    g = torch.Generator(device="cuda").manual_seed(T)
    B, H = 2, 4
    q, k, v, dout = (torch.randn(B, H, T, D, device="cuda", generator=g) for _ in range(4))
    q = q * D ** -0.5 * 2  # peaked attention, as after training
    table = torch.randn(32, H, device="cuda", generator=g)
    ref = attention_grads("sdpa", q, k, v, table, dout, torch.float64)
    sdpa = attention_grads("sdpa", q, k, v, table, dout, torch.bfloat16)
    fast = attention_grads(backend, q, k, v, table, dout, torch.bfloat16, kernels)
    for name, r, s, f in zip(["out", "dq", "dk", "dv", "dtable"], ref, sdpa, fast):
        assert torch.isfinite(f).all(), name
        err_s, err_f = rel_err(s, r), rel_err(f, r)
        print(f"{name}: sdpa bf16 {err_s:.2e}, {backend} bf16 {err_f:.2e}")
        assert err_f < 2e-2 and err_f < 3 * err_s + 2e-3, (name, err_f, err_s)


@pytest.mark.parametrize("backend", ["auto", "flex", "band"])
def test_compiled_training_step_matches_sdpa(backend):
    torch.manual_seed(0)
    cfg = ModelConfig.from_name("350m", n_layer=2, max_seq_len=512)
    ref = build_model(cfg.replace(attn_backend="sdpa"), device="cuda").to(torch.bfloat16)
    fast = build_model(cfg.replace(attn_backend=backend), device="cuda").to(torch.bfloat16)
    fast.load_state_dict(ref.state_dict())
    tokens = torch.randint(0, cfg.vocab_size, (4, 512), device="cuda")
    losses = []
    for m in (ref, torch.compile(fast)):
        logits = m(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
        loss.backward()
        losses.append(loss.item())
    assert abs(losses[0] - losses[1]) < 1e-2 * abs(losses[0])
    a, b = ref.rel_bias.weight.grad.double(), fast.rel_bias.weight.grad.double()
    assert ((a - b).norm() / a.norm()).item() < 5e-2
    for (name, p), p2 in zip(ref.named_parameters(), fast.parameters()):
        assert ((p.grad.double() - p2.grad.double()).norm() / p.grad.double().norm()) < 5e-2, name


def test_graph_step_samples_what_the_eager_step_samples():
    torch.manual_seed(0)
    cfg = ModelConfig.from_name("debug", vocab_size=1000)
    model = build_model(cfg, device="cuda").eval()  # float32: sampling is exactly reproducible
    tok = BenchTokenizer(cfg.vocab_size)
    prompts = [list(range(20, 60)), list(range(30, 45))]
    sampling = SamplingConfig(num_candidates=4, max_new_tokens=12, seed=1)
    step = GraphStep()
    for _ in range(2):  # the second turn replays the captured graph
        eager = generate(model, tok, prompts, sampling, step=EagerStep())
        graph = generate(model, tok, prompts, sampling, step=step)
        assert [[c.ids for c in cs] for cs in graph.candidates] == \
            [[c.ids for c in cs] for cs in eager.candidates]
        assert torch.allclose(score_generation(model, tok, graph),
                              score_generation(model, tok, eager), atol=1e-4)


def test_the_engine_on_cuda_decodes_joining_requests_as_alone(tok):
    """Continuous batching on the GPU: rows of requests that join and leave a running batch (and
    end at different lengths) sample what each request samples alone."""
    torch.manual_seed(0)
    model = EarlyStopper(ModelConfig.from_name("debug", vocab_size=tok.vocab_size)).cuda().eval()
    model.eot = tok.eot_id
    prompts = [prompt(tok, "Hi"), prompt(tok, "Tell me about jazz", 6), prompt(tok, "Why?", 2)]
    configs = [SamplingConfig(num_candidates=8, max_new_tokens=40, seed=1),
               SamplingConfig(num_candidates=4, max_new_tokens=6, seed=2, temperature=0.7, top_k=5),
               SamplingConfig(num_candidates=1, max_new_tokens=8, temperature=0.0)]
    engine = DecodeEngine(model, tok)
    try:
        futures = []
        for p, cfg in zip(prompts, configs):
            futures.append(engine.submit(p, cfg))
            wait_steps(engine, engine.steps + 3, timeout=2)  # or until it has ended
        got = [key(f.result(timeout=60)) for f in futures]
    finally:
        engine.close()
    assert got == [alone(model, tok, p, cfg) for p, cfg in zip(prompts, configs)]


def test_an_engine_step_waits_for_the_gpu_once_or_twice(tok):
    """What tests/unit/test_engine.py counts on the CPU, counted by CUDA's sync debug mode: a
    decode step of 8 requests synchronises once (which rows ended), twice when requests finish."""
    torch.manual_seed(0)
    model = EarlyStopper(ModelConfig.from_name("debug", vocab_size=tok.vocab_size)).cuda().eval()
    model.eot = tok.eot_id
    engine = DecodeEngine(model, tok)
    requests = [_Request(prompt(tok, f"Question number {i}"), SamplingConfig(
        num_candidates=4, max_new_tokens=24, seed=i), None, Future()) for i in range(8)]
    syncs = []
    try:
        with torch.no_grad():
            engine._waiting += requests
            engine._admit()
            while engine.requests:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    torch.cuda.set_sync_debug_mode("warn")
                    try:
                        engine._step()
                    finally:
                        torch.cuda.set_sync_debug_mode("default")
                syncs.append(sum("synchroniz" in str(w.message) for w in caught))
    finally:
        engine.close()
    assert all(r.future.done() for r in requests)
    assert 1 <= max(syncs) <= 2 and min(syncs) >= 1, syncs
