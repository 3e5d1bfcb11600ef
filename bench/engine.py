"""The decode engine (lamda.engine) in-process on a trained export: turns/s at several
concurrencies, how unevenly a turn's candidates end, and the rows the model ran. Prints JSON lines.

    python bench/engine.py --model runs/local/finetuned_safe [--clients 1 4 16] [--turns 32]
    python bench/engine.py --preset 350m --tokenizer runs/local/tokenizer.model --device cuda \
        --clients 1 64 --turns 64   # random weights: every candidate runs to the token limit

Each turn is sample-and-rank's sampling half: 16 candidates, top-k 40, up to 64 tokens, its own
seed, for a user message from a fixed list (a new conversation each). A trained model's
candidates end at different lengths; `wasted` is the share of row-steps a batch that ran every
candidate to its turn's longest would spend on ended rows. One torch thread; bf16 on CUDA.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.serve import random_model, under_load  # noqa: E402
from lamda.checkpoint import load_export  # noqa: E402
from lamda.data import Turn, response_prompt  # noqa: E402
from lamda.decode import SamplingConfig  # noqa: E402
from lamda.engine import DecodeEngine, EngineConfig  # noqa: E402

MESSAGES = ["What is 12 plus 30?", "Hi! How are you?", "What is the atomic number of carbon?",
            "How do you say cat in French?", "Tell me about the moon.", "What do you like to do?",
            "What is 345 times 2?", "Do you like music?", "What is the symbol of iron?",
            "Good morning!", "What is the German word for house?", "Where is Paris?"]
CANDIDATES = 16  # per turn, as sample-and-rank draws them


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", help="an export (jobs.pretrain / jobs.finetune)")
    model.add_argument("--preset", help="random weights of this size")
    p.add_argument("--tokenizer", type=Path, help="the tokenizer for --preset (default: one trained "
                   "on the bundled corpus, as bench/serve.py)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--turns", type=int, default=32, help="turns per concurrency")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--max-rows", type=int, default=EngineConfig.max_rows, help="EngineConfig.max_rows")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    if a.model:
        dtype = torch.bfloat16 if a.device.startswith("cuda") else None
        model, tok = load_export(a.model, device=a.device, dtype=dtype)
    else:
        model, tok = random_model(a.preset, a.tokenizer, a.device)
    engine = DecodeEngine(model.eval(), tok, EngineConfig(max_rows=a.max_rows))

    lengths: list[list[int]] = []  # each turn's candidate lengths

    def turn(i: int) -> None:  # turn i: message i, seed i
        prompt = response_prompt(tok, [Turn("user", MESSAGES[i % len(MESSAGES)])])
        cfg = SamplingConfig(num_candidates=CANDIDATES, max_new_tokens=a.max_new_tokens, seed=i)
        lengths.append([c.length for c in engine.submit(prompt, cfg).result().candidates])

    turn(0)  # warm-up
    for clients in a.clients:
        steps, row_steps = engine.steps, engine.row_steps
        lengths.clear()
        numbers = itertools.count()  # the same turns at every concurrency
        load = under_load(lambda: turn(next(numbers)), clients, a.turns)
        tokens = sum(map(sum, lengths))
        print(json.dumps({
            "bench": "engine", "model": a.preset or Path(a.model).name, "device": a.device,
            "clients": clients, "turns": a.turns, "max_rows": a.max_rows,
            "turns_per_s": load["requests_per_s"], "p50_s": load["p50_s"], "p99_s": load["p99_s"],
            "candidate_tokens": tokens,
            "wasted": round(1 - tokens / sum(CANDIDATES * max(ls) for ls in lengths), 3),
            "steps": engine.steps - steps, "row_steps": engine.row_steps - row_steps}), flush=True)
    engine.close()


if __name__ == "__main__":
    main()
