"""The LaMDA pipeline as one job: tokenizer -> pre-training -> fine-tuning -> safe-data filtering
-> second fine-tuning -> retrieval index -> an example chat turn -> evaluation -> the chat server.

    python -m jobs.pipeline [--workdir runs/local] [--preset tiny] [--workers 2] [--serve --block]
    ray job submit --working-dir . -- python -m jobs.pipeline --workers 4 --gpus-per-worker 1

Each stage prints a progress line and is skipped when its output exists; training stages resume
from their latest checkpoint (delete the workdir to start over). Runs on the Ray cluster of
`ray job submit`, or on a local Ray started for the job.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from jobs import evaluate, filter_safe, finetune, pretrain
from jobs.common import init_ray
from jobs.train_tokenizer import train_tokenizer
from lamda.chat import ChatModel, local_turn
from lamda.checkpoint import load_export
from lamda.config import PRESETS
from lamda.data import SAMPLE_DIR, Turn
from lamda.roles import load_roles
from lamda.tools import Toolset, retrieval
from lamda.tools.dictd import find_database
from lamda.tools.retrieval import Retriever


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("runs/local"), help="outputs of every stage")
    p.add_argument("--data-dir", type=Path, default=SAMPLE_DIR, help="corpus (bundled sample)")
    p.add_argument("--preset", default="tiny", choices=list(PRESETS), help="model size")
    p.add_argument("--vocab-size", type=int, default=4096, help="tokenizer vocabulary")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers")
    p.add_argument("--gpus-per-worker", type=float, default=0.0)
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--pretrain-steps", type=int, default=150)
    p.add_argument("--finetune-steps", type=int, default=60)
    p.add_argument("--safe-finetune-steps", type=int, default=20)
    p.add_argument("--top-fraction", type=float, default=0.5, help="safe-data filtering keeps this")
    p.add_argument("--batch-size", type=int, default=8, help="per worker")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--eval-contexts", type=int, default=30, help="evaluation contexts per variant")
    p.add_argument("--serve", action="store_true", help="finish by deploying the chat app")
    p.add_argument("--block", action="store_true", help="with --serve: keep serving until Ctrl-C")
    p.add_argument("--port", type=int, default=8000, help="HTTP port of the chat app (127.0.0.1)")
    p.add_argument("--address", default=None, help="Ray address (default: job's cluster or local)")
    return p


def deploy(work: Path, port: int) -> str:
    """The chat app from serve_apps/chat.yaml's settings, on this run's models; returns its URL."""
    from ray import serve

    from serve_apps.app import build_app, yaml_options
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"model": str(work / "finetuned_safe"), "index": str(work / "index.sqlite"),
                         "conversations": str(work / "conversations.sqlite")}, yaml_options()),
              name="lamda", route_prefix="/")
    return f"http://127.0.0.1:{port}"


def example_request(url: str) -> str:
    import httpx
    body = {"message": "How tall are you?", "model": "lamda-everest", "trace": False}
    r = httpx.post(f"{url}/chat", json=body, timeout=120)
    return (f"  curl -s {url}/chat -H 'Content-Type: application/json' -d '{json.dumps(body)}'\n"
            f"  -> {r.status_code} {r.text[:300]}")


def build_index(index: Path, data: Path) -> None:
    """The retrieval index: the bundled documents, plus dict-elements where installed."""
    extra = ["--dictd", "elements"] if find_database("elements") else []
    retrieval.main(["--db", str(index), "--jsonl", str(data / "documents.jsonl"), *extra])


def example_turn(export: Path, index: Path) -> str:
    """One turn as Mount Everest: sample-and-rank, then the research loop with the toolset."""
    model, tok = load_export(export)
    role = load_roles()["lamda-everest"]
    question = Turn("user", "How tall are you?")
    answer = local_turn(ChatModel(model, tok), Toolset(retriever=Retriever(index)),
                        role.context([question]))
    lines = [f"  USER: {question.text}", f"  LAMDA (as Mount Everest): {answer.reply}"]
    if answer.ranked.best:
        best = answer.ranked.best
        lines.append(f"  (best of {len(answer.ranked.candidates)}: P(sensible) {best.sensible:.2f}, "
                     f"P(unsafe) {best.unsafe:.2f}; {answer.flops / 1e9:.1f} GFLOPs)")
    for step in answer.research.steps if answer.research else []:
        lines.append(f"  TS, {step.query} -> {list(step.results)[:2]}")
    return "\n".join(lines)


def main(argv=None) -> None:
    a = parser().parse_args(argv)
    work, data = a.workdir.resolve(), a.data_dir
    init_ray(a.address, a.workers * a.cpus_per_worker)
    train = ["--storage-path", str(work / "ray"), "--workers", str(a.workers),
             "--gpus-per-worker", str(a.gpus_per_worker), "--cpus-per-worker", str(a.cpus_per_worker),
             "--batch-size", str(a.batch_size), "--seq-len", str(a.seq_len)]
    tok, pre, ft, safe, ft2, index = (work / "tokenizer.model", work / "pretrained",
                                      work / "finetuned", work / "safe_dialogs",
                                      work / "finetuned_safe", work / "index.sqlite")
    stages = [
        ("tokenizer", tok, lambda: train_tokenizer([data / "documents.jsonl"], [data / "dialogs.jsonl"],
                                                   a.vocab_size, tok)),
        ("pre-training", pre / "manifest.json", lambda: pretrain.main([
            "--run-name", "pretrain", "--preset", a.preset, "--tokenizer", str(tok),
            "--documents", str(data / "documents.jsonl"), "--dialogs", str(data / "dialogs.jsonl"),
            "--steps", str(a.pretrain_steps), "--export", str(pre), *train])),
        ("fine-tuning", ft / "manifest.json", lambda: finetune.main([
            "--run-name", "finetune", "--init-from", str(pre), "--labelled",
            str(data / "labelled.jsonl"), "--research", str(data / "research.jsonl"),
            "--steps", str(a.finetune_steps), "--export", str(ft), *train])),
        ("safe-data filtering", safe, lambda: filter_safe.main([
            "--model", str(ft), "--dialogs", str(data / "dialogs.jsonl"), "--out", str(safe),
            "--top-fraction", str(a.top_fraction), "--actors", str(max(1, a.workers)),
            "--cpus-per-actor", str(a.cpus_per_worker), "--gpus-per-actor", str(a.gpus_per_worker)])),
        ("fine-tuning on safe data", ft2 / "manifest.json", lambda: finetune.main([
            "--run-name", "finetune-safe", "--init-from", str(ft), "--dialogs", str(safe),
            "--labelled", "--research", "--steps", str(a.safe_finetune_steps),
            "--export", str(ft2), *train])),
        ("retrieval index", index, lambda: build_index(index, data)),
    ]
    total = len(stages) + 2 + a.serve
    for i, (name, done_marker, run) in enumerate(stages, 1):
        print(f"[{i}/{total}] {name}", flush=True)
        if done_marker.exists():
            print(f"  exists: {done_marker}")
        else:
            run()
    print(f"[{len(stages) + 1}/{total}] example turn (sample-and-rank, research loop)", flush=True)
    print(example_turn(ft2, index))
    print(f"[{len(stages) + 2}/{total}] evaluation", flush=True)
    if (work / "eval" / "report.json").exists():
        print(f"  exists: {work / 'eval' / 'report.json'}")
    else:
        evaluate.main(["--models", str(pre), str(ft), str(ft2), "--index", str(index),
                       "--limit", str(a.eval_contexts), "--candidates", "8",
                       "--out", str(work / "eval")])
    if a.serve:
        print(f"[{total}/{total}] chat server", flush=True)
        url = deploy(work, a.port)
        print(f"  serving on {url} (OpenAI API at {url}/v1, docs at {url}/docs); example:")
        print(example_request(url))
        print("  chat in a terminal: .venv/bin/python -m serve_apps.client --model lamda-everest --trace")
    print(f"pipeline done: {ft2}", flush=True)
    if a.serve and a.block:
        print("serving until Ctrl-C", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
