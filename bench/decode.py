"""Sample-and-rank decoding benchmark. Prints JSON.

    python bench/decode.py                      # CPU ratios on `tiny`, measured in one run
    python bench/decode.py --device cuda        # one chat turn on `350m` in bf16, + HF baseline

CPU ratios (random weights; the work, not the text, is measured):
  batched_vs_one_at_a_time   16 candidates as one batch vs 16 separate decodes
  cached_vs_recompute        128 new tokens with the KV cache vs a full forward per token
  cached_vs_reencode_scoring discriminator scores of 16 candidates reusing the decode cache vs
                             re-encoding context + response for each of the 4 attributes
GPU: one turn = 256-token context, 16 candidates x 64 new tokens (no early stop), then ranking;
latency and new tokens/s with the eager step, with the CUDA-graph step (GraphStep), and with 4
concurrent requests in one batch (64 rows), next to HF transformers' generate(num_return_sequences=16, top_k=40) on a
random Llama-shaped model of the same size (optional: skipped when transformers is missing).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from lamda.config import ModelConfig  # noqa: E402
from lamda.decode import EagerStep, GraphStep, SamplingConfig, generate, sample_top_k  # noqa: E402
from lamda.model import build_model  # noqa: E402
from lamda.rank import score_generation, score_uncached  # noqa: E402
from lamda.tokenizer import EOS_ID  # noqa: E402


class BenchTokenizer:
    """Just what decoding needs, with an <eot> id that random weights practically never pick
    (so every candidate runs to max_new_tokens and the work is fixed)."""

    pad_id, eos_id = 0, EOS_ID

    def __init__(self, vocab_size: int):
        self.vocab_size, self.eot_id = vocab_size, vocab_size - 1
        self._special = {name: 4 + i for i, name in enumerate(
            ["RESPONSE", "SENSIBLE", "SPECIFIC", "INTERESTING", "UNSAFE", "<0>", "<1>", "USER:"])}

    def special(self, name):
        return self._special[name]

    def decode(self, ids):
        return " ".join(map(str, ids))

    def encode(self, text):
        return [int(t) for t in text.split()]


def timed(fn, device, repeat=3):
    times = []
    for _ in range(repeat):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


@torch.no_grad()
def recompute_decode(model, prompt, new_tokens, top_k, gen):
    """The uncached reference: a full forward over the whole sequence for every new token."""
    seq = torch.tensor([prompt], device=next(model.parameters()).device)
    for _ in range(new_tokens):
        nxt, _ = sample_top_k(model(seq)[:, -1], top_k, 1.0, gen)
        seq = torch.cat([seq, nxt[:, None]], 1)
    return seq


def cpu_ratios(a) -> dict:
    torch.manual_seed(0)
    cfg = ModelConfig.from_name(a.preset)
    model = build_model(cfg).eval()
    tok = BenchTokenizer(cfg.vocab_size)
    prompt = torch.randint(20, cfg.vocab_size - 1, (a.context,)).tolist()
    s16 = SamplingConfig(num_candidates=16, max_new_tokens=a.new_tokens, seed=0)
    s1 = SamplingConfig(num_candidates=1, max_new_tokens=a.new_tokens, seed=0)
    batched, gen16 = timed(lambda: generate(model, tok, [prompt], s16), "cpu")
    one_by_one, _ = timed(lambda: [generate(model, tok, [prompt], s1) for _ in range(16)], "cpu", 1)

    long_cfg = SamplingConfig(num_candidates=1, max_new_tokens=128, seed=0)
    cached, _ = timed(lambda: generate(model, tok, [prompt], long_cfg), "cpu")
    g = torch.Generator().manual_seed(0)
    recompute, _ = timed(lambda: recompute_decode(model, prompt, 128, 40, g), "cpu", 1)

    score_cached, _ = timed(lambda: score_generation(model, tok, gen16), "cpu")
    score_reencode, _ = timed(lambda: [score_uncached(model, tok, prompt, c.ids)
                                       for c in gen16.candidates[0]], "cpu", 1)
    return {
        "bench": "decode_cpu", "preset": a.preset, "context": a.context,
        "new_tokens": a.new_tokens, "threads": torch.get_num_threads(),
        "batched_16_s": round(batched, 4), "one_at_a_time_16_s": round(one_by_one, 4),
        "batched_vs_one_at_a_time": round(one_by_one / batched, 2),
        "cached_128_s": round(cached, 4), "recompute_128_s": round(recompute, 4),
        "cached_vs_recompute": round(recompute / cached, 2),
        "scoring_cached_s": round(score_cached, 4), "scoring_reencode_s": round(score_reencode, 4),
        "cached_vs_reencode_scoring": round(score_reencode / score_cached, 2),
    }


def gpu_turn(a) -> dict:
    """One chat turn (sample 16 x new_tokens, then rank) with the eager step and with the CUDA
    graph step, and the graph step for 4 concurrent requests in one batch."""
    torch.manual_seed(0)
    cfg = ModelConfig.from_name(a.preset, max_seq_len=1024)
    model = build_model(cfg, device="cuda").to(torch.bfloat16).eval()
    tok = BenchTokenizer(cfg.vocab_size)
    prompts = [torch.randint(20, cfg.vocab_size - 1, (a.context,)).tolist() for _ in range(4)]
    sampling = SamplingConfig(num_candidates=16, max_new_tokens=a.new_tokens, seed=0)

    def turn(step, n_requests=1):
        gen = generate(model, tok, prompts[:n_requests], sampling, step=step)
        return score_generation(model, tok, gen)

    out = {"bench": "decode_gpu", "device": torch.cuda.get_device_name(), "preset": a.preset,
           "dtype": "bf16", "context": a.context, "candidates": 16, "new_tokens": a.new_tokens}
    graph = GraphStep()
    for name, step, n in [("eager", EagerStep(), 1), ("graph", graph, 1),
                          ("graph_4_requests", graph, 4)]:
        for _ in range(2):  # warm-up (and compilation)
            turn(step, n)
        latency, _ = timed(lambda: turn(step, n), "cuda", a.repeat)
        out[f"{name}_turn_ms"] = round(latency * 1000, 1)
        out[f"{name}_new_tokens_per_s"] = round(16 * n * a.new_tokens / latency, 1)
        print(json.dumps({name: out[f"{name}_turn_ms"]}), file=sys.stderr, flush=True)
    gen = generate(model, tok, prompts[:1], sampling, step=graph)
    ranking, _ = timed(lambda: score_generation(model, tok, gen), "cuda", a.repeat)
    out["ranking_ms"] = round(ranking * 1000, 1)
    out["turn_ms"] = out["graph_turn_ms"]
    try:
        out.update(hf_baseline(a, cfg))
    except Exception as e:  # the baseline is optional; keep our own figures
        out.update({"hf_generate_ms": None, "hf_note": f"{type(e).__name__}: {e}"[:300]})
    return out


def hf_baseline(a, cfg: ModelConfig) -> dict:
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        return {"hf_generate_ms": None, "hf_note": "transformers not installed"}
    hf_cfg = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model,
                         intermediate_size=cfg.d_ff, num_hidden_layers=cfg.n_layer,
                         num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_head,
                         head_dim=cfg.d_kv, max_position_embeddings=2048)
    hf = LlamaForCausalLM(hf_cfg).to("cuda", torch.bfloat16).eval()
    ids = torch.randint(20, cfg.vocab_size - 1, (1, a.context), device="cuda")

    def run():
        with torch.no_grad():
            return hf.generate(ids, do_sample=True, top_k=40, num_return_sequences=16,
                               max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens)

    run()
    latency, _ = timed(run, "cuda", a.repeat)
    return {"hf_generate_ms": round(latency * 1000, 1),
            "hf_params": sum(p.numel() for p in hf.parameters()),
            "speedup_vs_hf": None}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--preset", default=None, help="default: tiny on CPU, 350m on CUDA")
    p.add_argument("--context", type=int, default=None, help="default: 128 on CPU, 256 on CUDA")
    p.add_argument("--new-tokens", type=int, default=None, help="default: 32 on CPU, 64 on CUDA")
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args(argv)
    cuda = a.device == "cuda"
    a.preset = a.preset or ("350m" if cuda else "tiny")
    a.context = a.context or (256 if cuda else 128)
    a.new_tokens = a.new_tokens or (64 if cuda else 32)
    result = gpu_turn(a) if cuda else cpu_ratios(a)
    if result.get("hf_generate_ms"):
        result["speedup_vs_hf"] = round(result["hf_generate_ms"] / result["turn_ms"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
