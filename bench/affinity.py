"""Conversation affinity across Sampler replicas: how much of the prompts the Sampler's prefix
cache saves when a conversation's calls reach one replica, and what it costs in balance, against
Serve's default router (power of two choices, which spreads them). One JSON line per router.

    python bench/affinity.py [--replicas 2] [--conversations 16] [--turns 4] [--clients 8]
                             [--research] [--max-excess 4] [--preset tiny | --model EXPORT]

The same graph as bench/serve.py (random weights unless --model), with --replicas Sampler
replicas, is deployed once per router on the Sampler: Serve's default (power of two choices);
Serve's consistent-hash router (a conversation keeps to its replica until that one is full); the
Sampler's own (serve_apps.routing.ConversationRouter: the same, passing over a replica with more
than --max-excess requests in flight above the least loaded one's). Each time, the same
--conversations conversations of --turns turns go through `POST /chat`, --clients at a time,
every turn continuing its conversation by id. Reported, from the responses' usage (each turn's
prompt and its research prompts): the prompt positions prefilled and the share taken from a prefix
cache instead; turns/s and latency.
Every prompt begins with the role's pre-conditioning, which any replica's cache holds after one
turn; what affinity adds is the rest of a conversation's context.
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

from bench.serve import SAMPLING, random_model  # noqa: E402


def conversations(url: str, tag: str, n: int, turns: int, clients: int) -> dict:
    """`n` conversations of `turns` turns, `clients` conversations at a time: the usage summed
    over every turn and each turn's latency."""
    def one(i: int) -> list[tuple[dict, float]]:
        out, cid = [], None
        with httpx.Client(timeout=600) as http:
            for t in range(turns):
                body = {"message": f"{tag} {i} turn {t}: how tall is Mount Everest?", "trace": False}
                if cid:
                    body["conversation_id"] = cid
                t0 = time.perf_counter()
                r = http.post(url, json=body)
                r.raise_for_status()
                out.append((r.json()["usage"], time.perf_counter() - t0))
                cid = r.json()["conversation_id"]
        return out

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        turns_done = [x for conv in pool.map(one, range(n)) for x in conv]
    seconds = time.perf_counter() - t0
    total = lambda key: sum(u.get(key, 0) for u, _ in turns_done)  # noqa: E731
    prompt, reused = total("prompt") + total("research_prompt"), total("reused") + total("research_reused")
    latencies = sorted(s for _, s in turns_done)
    return {"turns": len(turns_done), "prompt_tokens": prompt, "prefilled_tokens": prompt - reused,
            "reused": round(reused / max(1, prompt), 3),
            "turns_per_s": round(len(turns_done) / seconds, 3),
            "p50_s": round(statistics.median(latencies), 3),
            "p99_s": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 3)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", help="random weights of this size")
    p.add_argument("--model", default=None, help="a trained export instead of random weights")
    p.add_argument("--replicas", type=int, default=2, help="Sampler replicas")
    p.add_argument("--conversations", type=int, default=16)
    p.add_argument("--turns", type=int, default=4, help="turns per conversation")
    p.add_argument("--clients", type=int, default=8, help="conversations at a time")
    p.add_argument("--max-excess", type=int, default=None,
                   help="ConversationRouter's bound (default: the Sampler's)")
    p.add_argument("--research", action="store_true", help="the research loop on")
    p.add_argument("--threads", type=int, default=1, help="torch threads per model replica")
    p.add_argument("--port", type=int, default=8322)
    a = p.parse_args(argv)

    import ray
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    from lamda.checkpoint import save_export
    from serve_apps.chat import Chat
    from serve_apps.deployments import Ranker, Sampler, Toolset

    work = Path(tempfile.mkdtemp())
    export = a.model or str(work / "export")
    if not a.model:
        torch.set_num_threads(a.threads)
        model, tok = random_model(a.preset)
        save_export(export, model.state_dict(), model.cfg, tok)
    ray.init(address="local", num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": a.port})
    small, concurrent = {"num_cpus": 0.25}, {"max_ongoing_requests": 64, "max_queued_requests": 256}
    ours = Sampler._deployment_config.request_router_config
    kwargs = {**ours.request_router_kwargs,
              **({} if a.max_excess is None else {"max_excess": a.max_excess})}
    routers = {"power_of_two": RequestRouterConfig(),
               "consistent_hash": RequestRouterConfig(
                   request_router_class="ray.serve.experimental.consistent_hash_router."
                                        "ConsistentHashRouter",
                   request_router_kwargs={"num_fallback_replicas": 2}),
               "conversation": RequestRouterConfig(request_router_class=ours.request_router_class,
                                                   request_router_kwargs=kwargs)}
    try:
        for name, router in routers.items():
            serve.run(Chat.options(ray_actor_options=small, **concurrent,
                                   user_config={"research": a.research, "max_iterations": 2}).bind(
                Sampler.options(ray_actor_options=small, num_replicas=a.replicas, user_config=SAMPLING,
                                request_router_config=router, **concurrent).bind(export, a.threads),
                Ranker.options(ray_actor_options=small, user_config={"safety_threshold": 0.0},
                               **concurrent).bind(export, a.threads),
                Toolset.options(ray_actor_options=small, **concurrent).bind(None),
                conversations=str(work / f"{name}.sqlite")), name="lamda", route_prefix="/")
            url = f"http://127.0.0.1:{a.port}/chat"
            conversations(url, "warm-up", a.replicas, 1, a.replicas)
            figures = conversations(url, "conversation", a.conversations, a.turns, a.clients)
            print(json.dumps({"bench": "sampler_affinity", "router": name,
                              **({"max_excess": kwargs["max_excess"]} if name == "conversation" else {}),
                              "model": Path(a.model).name if a.model else a.preset,
                              "sampler_replicas": a.replicas, "research": a.research,
                              "conversations": a.conversations, "clients": a.clients, **figures}),
                  flush=True)
            serve.delete("lamda")
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
