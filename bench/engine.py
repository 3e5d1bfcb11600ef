"""The decode engine (lamda.engine) in-process on a trained export: turns/s at several
concurrencies, how unevenly a turn's candidates end, and the rows the model ran. Prints JSON lines.

    python bench/engine.py --model runs/local/finetuned_safe [--clients 1 4 16] [--turns 32]

Each turn is sample-and-rank's sampling half: 16 candidates, top-k 40, up to 64 tokens, its own
seed, for a user message from a fixed list (a new conversation each). A trained model's
candidates end at different lengths; `wasted` is the share of row-steps a batch that ran every
candidate to its turn's longest would spend on ended rows. One torch thread.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from lamda.checkpoint import load_export  # noqa: E402
from lamda.data import Turn, response_prompt  # noqa: E402
from lamda.decode import SamplingConfig  # noqa: E402
from lamda.engine import DecodeEngine  # noqa: E402

MESSAGES = ["What is 12 plus 30?", "Hi! How are you?", "What is the atomic number of carbon?",
            "How do you say cat in French?", "Tell me about the moon.", "What do you like to do?",
            "What is 345 times 2?", "Do you like music?", "What is the symbol of iron?",
            "Good morning!", "What is the German word for house?", "Where is Paris?"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="an export (jobs.pretrain / jobs.finetune)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--turns", type=int, default=32, help="turns per concurrency")
    p.add_argument("--max-new-tokens", type=int, default=64)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    model, tok = load_export(a.model)
    engine = DecodeEngine(model.eval(), tok)

    def turn(i: int):
        prompt = response_prompt(tok, [Turn("user", f"{MESSAGES[i % len(MESSAGES)]}")])
        cfg = SamplingConfig(num_candidates=16, max_new_tokens=a.max_new_tokens, seed=i)
        t0 = time.perf_counter()
        decoded = engine.submit(prompt, cfg).result()
        return time.perf_counter() - t0, [c.length for c in decoded.candidates]

    turn(0)  # warm-up
    for clients in a.clients:
        steps, row_steps = engine.steps, engine.row_steps
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(turn, range(a.turns)))
        wall = time.perf_counter() - t0
        lengths = [ls for _, ls in results]
        latencies = sorted(s for s, _ in results)
        print(json.dumps({
            "bench": "engine", "model": Path(a.model).name, "clients": clients, "turns": a.turns,
            "turns_per_s": round(a.turns / wall, 3), "p50_s": round(statistics.median(latencies), 3),
            "candidate_tokens": sum(map(sum, lengths)),
            "wasted": round(1 - sum(map(sum, lengths)) / sum(16 * max(ls) for ls in lengths), 3),
            "steps": engine.steps - steps, "row_steps": engine.row_steps - row_steps}), flush=True)
    engine.close()


if __name__ == "__main__":
    main()
