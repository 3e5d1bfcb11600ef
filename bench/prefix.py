"""Prefix reuse in the decode engine: one turn with research, with and without the prefix cache.

    python bench/prefix.py [--preset tiny] [--context 32 64 128] [--turns 5]

A turn as the Serve graph runs it, on one DecodeEngine: the response (16 candidates x 32 tokens),
then three research steps (2 samples x 16 tokens each) whose prompts extend the context with the
draft and each step's tool result. Contexts of several lengths, one new conversation per turn
(numbered, so turns share no prefix). Prints per context length the prompt positions prefilled
and seconds per turn, with the prefix cache and without. Random weights: the work is measured.
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
from lamda.data import SAMPLE_DIR, ResearchStep, Turn, corpus_texts, read_jsonl, research_prompt, response_prompt  # noqa: E402,E501
from lamda.decode import SamplingConfig  # noqa: E402
from lamda.engine import DecodeEngine, EngineConfig  # noqa: E402
from lamda.model import build_model  # noqa: E402
from lamda.tokenizer import Tokenizer  # noqa: E402

RESPONSE = SamplingConfig(num_candidates=16, max_new_tokens=32, seed=0)
RESEARCH = SamplingConfig(num_candidates=2, max_new_tokens=16, seed=0)
RESULT = "Mount Everest is Earth's highest mountain above sea level, 8,849 metres tall."


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--context", type=int, nargs="+", default=[32, 64, 128], help="context tokens")
    p.add_argument("--turns", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    tok = Tokenizer.train(corpus_texts(read_jsonl(SAMPLE_DIR / "documents.jsonl", "document"),
                                       read_jsonl(SAMPLE_DIR / "dialogs.jsonl", "dialog")), 4096)
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_name(a.preset, vocab_size=tok.vocab_size)).eval()
    filler = " ".join(f"word{i}" for i in range(400))
    for length in a.context:
        row = {"bench": "prefix_reuse", "preset": a.preset, "context_tokens": length}
        for name, budget in (("cached", EngineConfig().prefix_cache_tokens), ("uncached", 0)):
            engine = DecodeEngine(model, tok, EngineConfig(prefix_cache_tokens=budget))
            seconds = []
            for turn in range(a.turns + 1):  # the first turn warms up
                text = f"{turn} " + tok.decode(tok.encode(filler)[:length])
                t0 = time.perf_counter()
                one_turn(engine, tok, [Turn("user", text)])
                seconds.append(time.perf_counter() - t0)
            row[f"{name}_s"] = round(statistics.median(seconds[1:]), 4)
            row[f"{name}_prefilled"] = engine.prompt_tokens - engine.prefix_tokens
            engine.close()
        row["speedup"] = round(row["uncached_s"] / row["cached_s"], 3)
        print(json.dumps(row), flush=True)


def one_turn(engine: DecodeEngine, tok: Tokenizer, context: list[Turn]) -> None:
    draft = engine.submit(response_prompt(tok, context), RESPONSE).result().candidates[0].text
    steps: list[ResearchStep] = []
    for i in range(3):
        engine.submit(research_prompt(tok, context, draft, steps), RESEARCH).result()
        steps.append(ResearchStep(f"query {i}", (RESULT,)))


if __name__ == "__main__":
    main()
