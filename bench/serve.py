"""Serving overhead and throughput on this machine. Prints JSON lines.

    python bench/serve.py [--preset tiny | --model EXPORT] [--turns 10] [--research]
                          [--research-candidates 8] [--clients 1 4 16 64] [--prefix-cache-tokens N]

1. The same turn (16 candidates x 32 tokens, ranking; same seed) through HTTP + Ray Serve vs the
   same calls in-process (the Sampler's continuous-batching engine, lamda.engine, and the Ranker's
   scoring, split exactly as in the graph), both with the same torch thread count: the ratio is
   the overhead Serve adds.
2. At 1, 4, 16 and 64 concurrent clients: requests/s, p50 and p99 latency, served and in-process
   (the same engine, the same number of concurrent turns).
`--research` runs the research loop after sample-and-rank (the Toolset's calculator and
translator; random weights route at random, so the loop's length varies), else the work is fixed;
each research step samples `--research-candidates` outputs (ChatConfig's default, at its
temperature) in-process and served alike.
Every request is a new conversation whose message begins with its own number, so no two
requests share a prefix; within a turn the research steps reuse the context's cache
(`--prefix-cache-tokens 0` turns that off). Random weights: the work, not the text, is measured,
and every candidate runs to the token limit; `--model` serves a trained export instead, whose
candidates end where the model ends them.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
import torch  # noqa: E402

SAMPLING = {"num_candidates": 16, "max_new_tokens": 32, "seed": 0}


def random_model(preset: str, tokenizer: Path | None = None, device: str = "cpu"):
    """(model, tokenizer): random weights of `preset` (seed 0, bf16 on CUDA), with the tokenizer
    at `tokenizer` or one trained on the bundled corpus."""
    from lamda.config import ModelConfig
    from lamda.data import SAMPLE_DIR, corpus_texts, read_jsonl
    from lamda.model import build_model
    from lamda.tokenizer import Tokenizer
    tok = Tokenizer.load(tokenizer) if tokenizer else Tokenizer.train(corpus_texts(
        read_jsonl(SAMPLE_DIR / "documents.jsonl", "document"),
        read_jsonl(SAMPLE_DIR / "dialogs.jsonl", "dialog")), 4096)
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_name(preset, vocab_size=tok.vocab_size), device=device)
    return (model.to(torch.bfloat16) if device.startswith("cuda") else model).eval(), tok


def main(argv=None) -> None:
    from lamda.turn import ChatConfig, ChatModel, chat_turn, research_sampling
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", help="random weights of this size")
    p.add_argument("--model", default=None, help="a trained export instead of random weights")
    p.add_argument("--turns", type=int, default=10)
    p.add_argument("--port", type=int, default=8321)
    p.add_argument("--research", action="store_true", help="the research loop on")
    p.add_argument("--research-candidates", type=int, default=ChatConfig.research_candidates,
                   help="samples per research step, in-process and served (ChatConfig's default)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--prefix-cache-tokens", type=int, default=None,
                   help="the engines' prefix cache (default: EngineConfig's; 0: off)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads, in-process and per model replica (more than the cores "
                        "divided by the model replicas oversubscribes the CPU)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    import ray
    from ray import serve

    from lamda.checkpoint import load_export, save_export
    from lamda.data import Turn
    from lamda.decode import SamplingConfig
    from lamda.engine import DecodeEngine, EngineConfig
    from lamda.rank import RankConfig
    from lamda.tools import Toolset as Tools
    from serve_apps.chat import Chat
    from serve_apps.deployments import Ranker, Sampler, Toolset

    work = Path(tempfile.mkdtemp())
    export = a.model or str(work / "export")
    if a.model:
        model, tok = load_export(a.model)
        model.eval()
    else:
        model, tok = random_model(a.preset)
        save_export(export, model.state_dict(), model.cfg, tok)
    numbers = itertools.count()

    def message() -> str:
        return f"{next(numbers)} How tall is Mount Everest?"  # a new conversation each time

    # in-process: the graph's calls, sampler and ranker split the same way, on the same engine
    chat = ChatModel(model, tok)
    engine_cfg = {} if a.prefix_cache_tokens is None else {"prefix_cache_tokens": a.prefix_cache_tokens}
    engine = DecodeEngine(model, tok, EngineConfig(**engine_cfg))
    sampling, rank_cfg = SamplingConfig(**SAMPLING), RankConfig(safety_threshold=0.0)
    cfg = ChatConfig(sampling=sampling, research=a.research, max_iterations=2,
                     research_candidates=a.research_candidates)
    research_cfg = research_sampling(cfg)  # as the served Chat samples research outputs
    tools = Tools() if a.research else None

    def respond(ctx):
        prompt = chat.response_prompt(ctx, sampling)
        cands, f1, t1 = chat.sampled(prompt, engine.submit(prompt, sampling).result().candidates)
        ranked, f2, t2 = chat.score(ctx, cands, rank_cfg)
        return ranked, f1 + f2, {**t1, **t2}

    def research(ctx, draft, steps):
        prompt, routes = chat.research_request(ctx, draft, steps, research_cfg)
        decoded = engine.submit(prompt, research_cfg, routes).result()
        return chat.research_output(prompt, decoded.candidates)[:2]

    def local():
        chat_turn([Turn("user", message())], respond, research, tools, cfg)

    local()
    in_process = [timed(local) for _ in range(a.turns)]

    ray.init(address="local", num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": a.port})
    small = {"num_cpus": 0.25}
    threads = a.threads  # the replicas compute with as many threads as in-process
    concurrent = {"max_ongoing_requests": 128, "max_queued_requests": 256}
    serve.run(Chat.options(ray_actor_options=small, **concurrent,
                           user_config={"research": a.research, "max_iterations": 2,
                                        "research_candidates": cfg.research_candidates,
                                        "research_temperature": cfg.research_temperature}).bind(
        Sampler.options(ray_actor_options=small, user_config=SAMPLING, **concurrent).bind(
            export, threads, engine_cfg),
        Ranker.options(ray_actor_options=small, user_config={"safety_threshold": 0.0},
                       **concurrent).bind(export, threads),
        Toolset.options(ray_actor_options=small, **concurrent).bind(None),
        conversations=str(work / "conversations.sqlite")), name="lamda", route_prefix="/")
    url = f"http://127.0.0.1:{a.port}/chat"
    http = httpx.Client(timeout=300, limits=httpx.Limits(max_connections=128))

    def remote():
        r = http.post(url, json={"message": message(), "trace": False})
        r.raise_for_status()

    remote()
    via_serve = [timed(remote) for _ in range(a.turns)]
    local_s, serve_s = statistics.median(in_process), statistics.median(via_serve)
    common = {"model": Path(a.model).name if a.model else a.preset, "threads": a.threads,
              "research": a.research, "research_candidates": cfg.research_candidates,
              "prefix_cache_tokens": engine.cfg.prefix_cache_tokens}
    print(json.dumps({"bench": "serve_overhead", **common, **SAMPLING,
                      "in_process_s": round(local_s, 4), "serve_http_s": round(serve_s, 4),
                      "overhead": round(serve_s / local_s - 1, 3)}), flush=True)
    for clients in a.clients:
        n = max(8, 2 * clients)
        served, local_run = under_load(remote, clients, n), under_load(local, clients, n)
        print(json.dumps({"bench": "serve_throughput", **common, "clients": clients, "requests": n,
                          **{f"served_{k}": v for k, v in served.items()},
                          **{f"in_process_{k}": v for k, v in local_run.items()},
                          "served_vs_in_process": round(served["requests_per_s"]
                                                        / local_run["requests_per_s"], 3)}),
              flush=True)
    print(json.dumps({"bench": "prefix_reuse", **common, "prompt_tokens": engine.prompt_tokens,
                      "reused": round(engine.prefix_tokens / max(1, engine.prompt_tokens), 3)}))
    engine.close()
    serve.shutdown()
    ray.shutdown()


def under_load(fn, clients: int, n: int) -> dict:
    """`n` calls of `fn` from `clients` threads: requests/s, p50 and p99 latency (s)."""
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        latencies = sorted(pool.map(lambda _: timed(fn), range(n)))
    dt = time.perf_counter() - t0
    return {"requests_per_s": round(n / dt, 2), "p50_s": round(statistics.median(latencies), 3),
            "p99_s": round(latencies[min(n - 1, int(0.99 * n))], 3)}


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
