"""Serving overhead and throughput on this machine. Prints JSON lines.

    python bench/serve.py [--preset tiny] [--turns 10]

1. The same turn (16 candidates x 32 tokens, ranking; research off so the work is fixed, same
   seed) through HTTP + Ray Serve vs the same calls in-process (lamda.chat with the sampler and
   ranker split exactly as in the graph), both with the same torch thread count: the ratio is
   the overhead Serve adds.
2. Requests/s at 1, 4 and 16 concurrent clients.
Random weights: the work, not the text, is measured.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--turns", type=int, default=10)
    p.add_argument("--port", type=int, default=8321)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads, in-process and per model replica (more than the cores "
                        "divided by the model replicas oversubscribes the CPU)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    import ray
    from ray import serve

    from lamda.chat import ChatConfig, ChatModel, chat_turn
    from lamda.checkpoint import save_export
    from lamda.config import ModelConfig
    from lamda.data import SAMPLE_DIR, Turn, corpus_texts, read_jsonl
    from lamda.decode import SamplingConfig
    from lamda.model import build_model
    from lamda.rank import RankConfig
    from lamda.tokenizer import Tokenizer
    from serve_apps.chat import Chat
    from serve_apps.deployments import Ranker, Sampler, Toolset

    work = Path(tempfile.mkdtemp())
    tok = Tokenizer.train(corpus_texts(read_jsonl(SAMPLE_DIR / "documents.jsonl", "document"),
                                       read_jsonl(SAMPLE_DIR / "dialogs.jsonl", "dialog")), 4096)
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_name(a.preset, vocab_size=tok.vocab_size)).eval()
    save_export(work / "export", model.state_dict(), model.cfg, tok)
    message = "How tall is Mount Everest?"

    # in-process: the graph's calls, sampler and ranker split the same way
    chat = ChatModel(model, tok)
    sampling, rank_cfg = SamplingConfig(**SAMPLING), RankConfig(safety_threshold=0.0)

    def respond(ctx):
        (cands, f1, t1), = chat.sample([ctx], sampling)
        ranked, f2, t2 = chat.score(ctx, cands, rank_cfg)
        return ranked, f1 + f2, {**t1, **t2}

    def local():
        return chat_turn([Turn("user", message)], respond, None, None, ChatConfig(research=False))

    local()
    in_process = [timed(local) for _ in range(a.turns)]

    ray.init(address="local", num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": a.port})
    small = {"num_cpus": 0.25}
    export = str(work / "export")
    threads = a.threads  # the replicas compute with as many threads as in-process
    serve.run(Chat.options(ray_actor_options=small, user_config={"research": False}).bind(
        Sampler.options(ray_actor_options=small, user_config=SAMPLING).bind(export, threads),
        Ranker.options(ray_actor_options=small, user_config={"safety_threshold": 0.0}).bind(export, threads),
        Toolset.options(ray_actor_options=small).bind(None),
        conversations=str(work / "conversations.sqlite")), name="lamda", route_prefix="/")
    url = f"http://127.0.0.1:{a.port}/chat"

    def remote():
        r = httpx.post(url, json={"message": message, "trace": False}, timeout=120)
        r.raise_for_status()

    remote()
    via_serve = [timed(remote) for _ in range(a.turns)]
    local_s, serve_s = statistics.median(in_process), statistics.median(via_serve)
    print(json.dumps({"bench": "serve_overhead", "preset": a.preset, "threads": a.threads, **SAMPLING,
                      "in_process_s": round(local_s, 4), "serve_http_s": round(serve_s, 4),
                      "overhead": round(serve_s / local_s - 1, 3)}), flush=True)
    for clients in (1, 4, 16):
        n = max(8, 2 * clients)
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(clients) as pool:
            list(pool.map(lambda _: remote(), range(n)))
        dt = time.perf_counter() - t0
        print(json.dumps({"bench": "serve_throughput", "preset": a.preset, "clients": clients,
                          "requests": n, "requests_per_s": round(n / dt, 2)}), flush=True)
    serve.shutdown()
    ray.shutdown()


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
