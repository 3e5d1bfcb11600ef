"""The LaMDA pipeline as one job: retrieval index -> tool-use data -> tokenizer -> pre-training ->
fine-tuning -> safe-data filtering -> second fine-tuning -> evaluation against held-out questions
-> the chat server, checked over HTTP on the held-out questions (with example turns).

    python -m jobs.pipeline [--workdir runs/local] [--preset tiny] [--workers 2] [--serve --block]
    ray job submit --working-dir . -- python -m jobs.pipeline --workers 4 --gpus-per-worker 1

Each stage prints a progress line and is skipped when its output exists; training stages resume
from their latest checkpoint (delete the workdir to start over). Runs on the Ray cluster of
`ray job submit`, or on a local Ray started for the job. Ctrl-C stops it at any stage (exit status
130), and stops the chat app and the local Ray if the job started them.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

from jobs import evaluate, filter_safe, finetune, pretrain, tool_data
from jobs.common import init_ray, shutdown_ray
from jobs.train_tokenizer import train_tokenizer
from lamda import eval as E
from lamda.config import PRESETS
from lamda.data import SAMPLE_DIR
from lamda.tool_data import read_questions
from lamda.tools import retrieval


# Training budget of the embedded default (`tiny` on 2 CPU workers): see bench/RESULTS.md for the
# held-out accuracy these reach and the curve against steps.
PRETRAIN_STEPS, FINETUNE_STEPS, SAFE_FINETUNE_STEPS = 20, 250, 30


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("runs/local"), help="outputs of every stage")
    p.add_argument("--data-dir", type=Path, default=SAMPLE_DIR, help="corpus (bundled sample)")
    p.add_argument("--preset", default="tiny", choices=list(PRESETS), help="model size")
    p.add_argument("--vocab-size", type=int, default=4096, help="tokenizer vocabulary")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers")
    p.add_argument("--gpus-per-worker", type=float, default=0.0)
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--pretrain-steps", type=int, default=PRETRAIN_STEPS)
    p.add_argument("--finetune-steps", type=int, default=FINETUNE_STEPS)
    p.add_argument("--safe-finetune-steps", type=int, default=SAFE_FINETUNE_STEPS)
    p.add_argument("--finetune-lr", type=float, default=2e-3,
                   help="peak learning rate of both fine-tunings (tiny learns tool use at 2e-3)")
    p.add_argument("--top-fraction", type=float, default=0.5, help="safe-data filtering keeps this")
    p.add_argument("--batch-size", type=int, default=8, help="rows per worker (fine-tuning packs "
                   "several examples into a row)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--tool-data-fraction", type=float, default=1.0,
                   help="scale of the tool-use training split (1: about 9,000 transcripts)")
    p.add_argument("--eval-per-kind", type=int, default=4,
                   help="held-out questions of each kind in the evaluation stage")
    p.add_argument("--check-per-kind", type=int, default=20,
                   help="held-out questions of each kind sent to the served app (with --serve)")
    p.add_argument("--serve", action="store_true", help="finish by deploying the chat app")
    p.add_argument("--block", action="store_true", help="with --serve: keep serving until Ctrl-C")
    p.add_argument("--port", type=int, default=8000, help="HTTP port of the chat app (127.0.0.1)")
    p.add_argument("--address", default=None, help="Ray address (default: job's cluster or local)")
    return p


def deploy(work: Path, port: int) -> str:
    """The chat app from serve_apps/chat.yaml's settings, on this run's models; returns its URL."""
    from ray import serve

    from serve_apps.app import build_app, yaml_options
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # the replicas log to Ray's logs
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"model": str(work / "finetuned_safe"), "index": str(work / "index.sqlite"),
                         "conversations": str(work / "conversations.sqlite")}, yaml_options()),
              name="lamda", route_prefix="/")
    return f"http://127.0.0.1:{port}"


def build_index(index: Path, data: Path) -> None:
    """The retrieval index: the bundled documents and Debian's dict-elements."""
    retrieval.main(["--db", str(index), "--jsonl", str(data / "documents.jsonl"), "--dictd", "elements"])


def complete(out: Path, build) -> None:
    """`build(tmp)`, then move tmp to `out`: an interrupted stage leaves no partial output that
    the next run would take for a finished one."""
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.unlink(missing_ok=True)
    build(tmp)
    tmp.rename(out)


def served_check(url: str, questions: Path, per_kind: int, out: Path) -> dict:
    """Held-out questions through the served POST /chat (model "lamda"), graded against their
    known answers; prints the figures and one example turn per tool, writes `out`."""
    import httpx
    graded, turns = [], []
    for q in evaluate.sample_questions(read_questions(questions), per_kind):
        r = httpx.post(f"{url}/chat", json={"message": q.text, "model": "lamda", "trace": True},
                       timeout=300)
        r.raise_for_status()
        body = r.json()
        calls = body["trace"]["tool_calls"]
        g = E.grade(q.kind, q.answers, q.url, body["reply"], body["trace"]["citations"], len(calls),
                    body["trace"]["fallback"])
        graded.append(g)
        turns.append({"kind": q.kind, "question": q.text, "reply": body["reply"], "correct": g.correct,
                      "tool_calls": [{"query": c["query"], "results": [x for t in c["calls"]
                                                                      for x in t["results"]][:3]}
                                     for c in calls]})
    metrics = E.grounding_metrics(graded)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"url": url, "metrics": metrics, "turns": turns}, indent=2,
                              ensure_ascii=False))
    print(f"  held-out questions through POST {url}/chat ({len(graded)}; answers checked against "
          f"their sources):")
    for kind in ("arithmetic", "element", "translation", "document", "chat"):
        if f"accuracy_{kind}" in metrics:
            n = sum(g.kind == kind for g in graded)
            what = "clean replies without tools" if kind == "chat" else "correct"
            cited = (f", {metrics[f'cited_{kind}']:.1%} correct and citing the source"
                     if f"cited_{kind}" in metrics else "")
            print(f"    {kind:<12} {metrics[f'accuracy_{kind}']:6.1%} {what}{cited} ({n})")
    print(f"    groundedness {metrics['groundedness'] or 0:.1%}, citation accuracy "
          f"{metrics['citation_accuracy'] or 0:.1%}; details: {out}")
    for kind in ("arithmetic", "element", "translation"):
        t = next((t for t in turns if t["kind"] == kind and t["correct"]),
                 next((t for t in turns if t["kind"] == kind), None))
        if t:
            print(f"  USER: {t['question']}")
            for c in t["tool_calls"]:
                print(f"    TS, {c['query']} -> {c['results']}")
            print(f"  LAMDA: {t['reply']}")
    return metrics


def main(argv=None) -> None:
    a = parser().parse_args(argv)
    own_ray = False
    try:
        own_ray = init_ray(a.address, a.workers * a.cpus_per_worker)
        run_stages(a)
    except KeyboardInterrupt:
        print("\ninterrupted: finished stages are kept and training resumes from its last "
              "checkpoint; run again to continue", flush=True)
        if own_ray:
            shutdown_ray()
        raise SystemExit(130) from None


def run_stages(a) -> None:
    """Every stage in turn; with --serve --block, serves until Ctrl-C (KeyboardInterrupt)."""
    work, data = a.workdir.resolve(), a.data_dir
    train = ["--storage-path", str(work / "ray"), "--workers", str(a.workers),
             "--gpus-per-worker", str(a.gpus_per_worker), "--cpus-per-worker", str(a.cpus_per_worker),
             "--batch-size", str(a.batch_size), "--seq-len", str(a.seq_len)]
    tok, pre, ft, safe, ft2, index = (work / "tokenizer.model", work / "pretrained",
                                      work / "finetuned", work / "safe_dialogs",
                                      work / "finetuned_safe", work / "index.sqlite")
    tools = work / "data"  # research.jsonl, dialogs.jsonl, drills.jsonl, heldout.jsonl
    finetune_data = ["--labelled", str(data / "labelled.jsonl"), "--research",
                     str(tools / "research.jsonl"), "--lr", str(a.finetune_lr)]
    stages = [
        ("retrieval index", index, lambda: complete(index, lambda tmp: build_index(tmp, data))),
        ("tool-use data (real tools) and held-out questions", tools / "heldout.jsonl",
         lambda: tool_data.main(["--index", str(index), "--out", str(tools),
                                 "--doc-questions", str(data / "doc_questions.jsonl"),
                                 "--documents", str(data / "documents.jsonl"),
                                 "--fraction", str(a.tool_data_fraction)])),
        ("tokenizer", tok, lambda: train_tokenizer(
            [tools / "documents.jsonl"], [data / "dialogs.jsonl", tools / "dialogs.jsonl"],
            a.vocab_size, tok, research=[tools / "research.jsonl"], index=index)),
        ("pre-training", pre / "manifest.json", lambda: pretrain.main([
            "--run-name", "pretrain", "--preset", a.preset, "--tokenizer", str(tok),
            "--documents", str(tools / "documents.jsonl"), "--dialogs", str(data / "dialogs.jsonl"),
            "--steps", str(a.pretrain_steps), "--export", str(pre), *train])),
        ("fine-tuning", ft / "manifest.json", lambda: finetune.main([
            "--run-name", "finetune", "--init-from", str(pre), *finetune_data,
            "--dialogs", str(tools / "dialogs.jsonl"), str(tools / "drills.jsonl"),
            "--steps", str(a.finetune_steps), "--export", str(ft), *train])),
        ("safe-data filtering", safe, lambda: complete(safe, lambda tmp: filter_safe.main([
            "--model", str(ft), "--dialogs", str(data / "dialogs.jsonl"), "--out", str(tmp),
            "--top-fraction", str(a.top_fraction), "--actors", str(max(1, a.workers)),
            "--cpus-per-actor", str(a.cpus_per_worker), "--gpus-per-actor", str(a.gpus_per_worker)]))),
        ("fine-tuning on safe data", ft2 / "manifest.json", lambda: finetune.main([
            "--run-name", "finetune-safe", "--init-from", str(ft), *finetune_data,
            "--dialogs", str(safe), str(tools / "dialogs.jsonl"), str(tools / "drills.jsonl"),
            "--steps", str(a.safe_finetune_steps), "--export", str(ft2), *train])),
        ("evaluation on held-out questions", work / "eval" / "report.json", lambda: evaluate.main([
            "--models", str(pre), str(ft2), "--questions", str(tools / "heldout.jsonl"),
            "--index", str(index), "--per-kind", str(a.eval_per_kind), "--candidates", "8",
            "--out", str(work / "eval")])),
    ]
    total = len(stages) + a.serve
    start = time.perf_counter()
    for i, (name, done_marker, run) in enumerate(stages, 1):
        print(f"[{i}/{total}] {name}", flush=True)
        if done_marker.exists():
            print(f"  exists: {done_marker}")
        else:
            t0 = time.perf_counter()
            run()
            print(f"  {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    if a.serve:
        print(f"[{total}/{total}] chat server", flush=True)
        url = deploy(work, a.port)
        print(f"  serving on {url} (OpenAI API at {url}/v1, docs at {url}/docs)")
        served_check(url, tools / "heldout.jsonl", a.check_per_kind, work / "eval" / "served.json")
        body = {"message": "What is 135+7721?", "model": "lamda"}
        print(f"  try: curl -s {url}/chat -H 'Content-Type: application/json' -d '{json.dumps(body)}'")
        print("  chat in a terminal: .venv/bin/python -m serve_apps.client --model lamda --trace")
    print(f"pipeline done in {time.perf_counter() - start:.0f} s: {ft2}", flush=True)
    if a.serve and a.block:
        print("serving until Ctrl-C", flush=True)
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    main()
