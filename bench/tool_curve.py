"""Held-out accuracy against training steps: the fine-tuning mixture of `make run` (tool-use
research transcripts, generative dialogs, copy drills, rater-labelled responses), trained in one
process without Ray, evaluated at the --eval-at steps through a whole chat turn (sample-and-rank
draft, research sampled as the chat app's ChatConfig does, real tools) on the held-out
questions. Prints one JSON line per evaluation.

    python -m jobs.tool_data --index runs/local/index.sqlite --out runs/local/data
    python bench/tool_curve.py --data runs/local/data --index runs/local/index.sqlite --steps 1500

Runs on CPU or, with --device cuda, on a GPU (no Ray needed; bf16 parameters and AdamW states
there, as bench/train_step.py).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lamda import data as D  # noqa: E402
from lamda import eval as E  # noqa: E402
from lamda.config import ModelConfig  # noqa: E402
from lamda.decode import SamplingConfig  # noqa: E402
from lamda.model import build_model  # noqa: E402
from lamda.tokenizer import Tokenizer  # noqa: E402
from lamda.tool_data import element_symbols, read_questions  # noqa: E402
from lamda.tools import Toolset  # noqa: E402
from lamda.tools.retrieval import Retriever  # noqa: E402
from lamda.training import TrainConfig, build_optimizer, cpu_bf16_pays, train_step  # noqa: E402
from lamda.turn import ChatConfig, ChatModel, local_turn  # noqa: E402


def examples(tok: Tokenizer, data: Path) -> list[D.Example]:
    out = [ex for r in D.read_jsonl(data / "research.jsonl", "research")
           for ex in D.finetune_examples(tok, r, "research")]
    for name in ("dialogs.jsonl", "drills.jsonl"):
        out += [ex for d in D.read_jsonl(data / name, "dialog") for ex in D.finetune_examples(tok, d, "dialog")]
    for path in (D.SAMPLE_DIR / "labelled.jsonl", data / "labelled.jsonl"):
        out += [ex for r in D.read_jsonl(path, "labelled") for ex in D.finetune_examples(tok, r, "labelled")]
    return out


def evaluate(chat: ChatModel, questions, toolset: Toolset, cfg: ChatConfig, tag: str,
             dump=None) -> dict:
    """Each question as a new conversation (`tag` keeps retrieval sessions apart between
    evaluations: a repeated query in one session returns the next result). With `dump` (an open
    file), one JSON line per question: its queries, reply and grade."""
    chat.model.eval()
    graded = []
    for q in questions:
        session = f"{tag}:{q.id}"
        a = local_turn(chat, lambda query: toolset(query, session), [D.Turn("user", q.text)], cfg)
        research = a.research
        graded.append(E.grade(q.kind, q.answers, q.url, a.reply, research.citations if research else [],
                              len(research.steps) if research else 0, a.fallback))
        if dump:
            print(json.dumps({"step": tag, "id": q.id, "kind": q.kind, "text": q.text,
                              "want_query": q.query, "answers": q.answers, "url": q.url,
                              "draft": research.draft if research else a.reply,
                              "queries": [s.query for s in research.steps] if research else [],
                              "reply": a.reply, "correct": graded[-1].correct,
                              "cited": graded[-1].cites_source}), file=dump, flush=True)
    chat.model.train()
    m = E.grounding_metrics(graded)
    return {k: round(v, 3) for k, v in m.items() if v is not None}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="jobs.tool_data output directory")
    p.add_argument("--index", type=Path, required=True)
    p.add_argument("--tokenizer", type=Path, default=None, help="default: train one on the data")
    p.add_argument("--max-piece-length", type=int, default=5,
                   help="of the tokenizer trained here (jobs.pipeline's default)")
    p.add_argument("--symbol-pieces", action="store_true",
                   help="let chemical symbols be pieces (by default the tokenizer spells them, as make run's)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--shape", default="",
                   help="ModelConfig fields over the preset's, e.g. n_layer=8,d_model=192,copy_dim=16")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=32, help="packed rows of --seq-len tokens per step")
    p.add_argument("--seq-len", type=int, default=128, help="as make run's fine-tuning rows")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--bias-lr-scale", type=float, default=TrainConfig.bias_lr_scale,
                   help="learning-rate multiplier of the relative-bias table")
    p.add_argument("--eval-at", type=lambda s: {int(x) for x in s.split(",")}, default={300, 600, 1200},
                   help="steps after which to evaluate (comma-separated; the last step always)")
    p.add_argument("--questions", type=Path, default=None,
                   help="held-out questions to grade on (default: DATA/heldout.jsonl)")
    p.add_argument("--per-kind", type=int, default=50,
                   help="held-out questions per kind (make run's file has 50-83, small talk 33)")
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--cpu-fp32", action="store_true",
                   help="train in float32 on CPU even where bf16 pays (lamda.training.cpu_bf16_pays)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dump", type=Path, default=None, help="a JSONL file of every graded turn")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    if a.tokenizer:
        tok = Tokenizer.load(a.tokenizer)
    else:
        tok = Tokenizer.train(D.corpus_texts(
            D.read_jsonl(D.SAMPLE_DIR / "documents.jsonl", "document"),
            D.read_jsonl(D.SAMPLE_DIR / "dialogs.jsonl", "dialog") + D.read_jsonl(a.data / "dialogs.jsonl", "dialog"),
            D.read_jsonl(a.data / "research.jsonl", "research")), 4096,
            symbols=Retriever(a.index).url_prefixes(), max_piece_length=a.max_piece_length,
            spelled=() if a.symbol_pieces else element_symbols())
    exs = examples(tok, a.data)
    shape = {k: int(v) for k, v in (kv.split("=") for kv in a.shape.split(",") if kv)}
    model = build_model(ModelConfig.from_name(a.preset, vocab_size=tok.vocab_size,
                                              max_seq_len=max(a.seq_len, 256), **shape), device=a.device)
    if a.device.startswith("cuda"):
        model = model.to(torch.bfloat16)
    cfg = TrainConfig(steps=a.steps, lr=a.lr, batch_size=a.batch,  # warm-up: a tenth of the steps
                      bias_lr_scale=a.bias_lr_scale)
    opt = build_optimizer(model, cfg)
    by_kind = defaultdict(list)
    for q in read_questions(a.questions or a.data / "heldout.jsonl"):
        by_kind[q.kind].append(q)
    questions = [q for qs in by_kind.values() for q in qs[:a.per_kind]]
    toolset = Toolset(retriever=Retriever(a.index)).warm_up()
    chat_cfg = ChatConfig(sampling=SamplingConfig(num_candidates=a.candidates, max_new_tokens=48, seed=a.seed))
    chat = ChatModel(model, tok)
    rng = random.Random(a.seed)
    per_row = sum(len(e.ids) for e in exs) / len(exs)
    take = max(1, round(a.batch * (a.seq_len + 1) / per_row))  # examples that fill about `batch` rows
    bf16 = not a.cpu_fp32 and cpu_bf16_pays(a.device)  # as the Ray Train loop
    dump = open(a.dump, "w", encoding="utf-8") if a.dump else None
    t0, trained = time.perf_counter(), 0.0
    for step in range(a.steps):
        batch = [t.to(a.device) if t is not None else None
                 for t in D.collate(rng.sample(exs, take), a.seq_len, tok.pad_id, packed=True)]
        m = train_step(model, opt, [tuple(batch)], step, cfg, bf16=bf16)
        if (step + 1) % 100 == 0:
            print(f"step {step + 1} loss {m['loss']:.4f}", file=sys.stderr, flush=True)
        if step + 1 in a.eval_at or step + 1 == a.steps:
            t1 = time.perf_counter()
            trained += t1 - t0
            result = evaluate(chat, questions, toolset, chat_cfg, tag=str(step + 1), dump=dump)
            print(json.dumps({"bench": "tool_curve", "preset": a.preset, "shape": a.shape, "device": a.device,
                              "bf16": bf16, "step": step + 1, "examples": (step + 1) * take,
                              "loss": round(m["loss"], 4), "train_seconds": round(trained, 1),
                              "eval_seconds": round(time.perf_counter() - t1, 1),
                              "questions": len(questions), **result}), flush=True)
            t0 = time.perf_counter()


if __name__ == "__main__":
    main()
