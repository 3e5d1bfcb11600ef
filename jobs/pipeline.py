"""The LaMDA pipeline as one job: tokenizer -> pre-training -> fine-tuning -> safe-data filtering
-> second fine-tuning -> an example chat turn (evaluation and serving stages follow).

    python -m jobs.pipeline [--workdir runs/local] [--preset tiny] [--workers 2]
    ray job submit --working-dir . -- python -m jobs.pipeline --workers 4 --gpus-per-worker 1

Each stage prints a progress line and is skipped when its output exists; training stages resume
from their latest checkpoint (delete the workdir to start over). Runs on the Ray cluster of
`ray job submit`, or on a local Ray started for the job.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jobs import filter_safe, finetune, pretrain
from jobs.common import init_ray
from jobs.train_tokenizer import train_tokenizer
from lamda.checkpoint import load_export
from lamda.config import PRESETS
from lamda.data import SAMPLE_DIR, read_jsonl, response_prompt
from lamda.decode import SamplingConfig, generate
from lamda.rank import RankConfig, rank, score_generation


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
    p.add_argument("--address", default=None, help="Ray address (default: job's cluster or local)")
    return p


def example_turn(export: Path, data: Path) -> str:
    """Sample-and-rank one reply to the first evaluation context."""
    model, tok = load_export(export)
    context = list(read_jsonl(data / "eval_mtb.jsonl", "dialog")[0].turns)
    gen = generate(model, tok, [response_prompt(tok, context)], SamplingConfig(seed=0))
    ranked = rank(gen.candidates[0], score_generation(model, tok, gen), RankConfig())
    best = ranked.best
    return (f"  USER: {context[-1].text}\n  LAMDA: {ranked.reply}\n"
            + (f"  (best of 16: P(sensible) {best.sensible:.2f}, P(unsafe) {best.unsafe:.2f}, "
               f"{sum(s.filtered is not None for s in ranked.candidates)} filtered as unsafe)"
               if best else "  (every candidate was unsafe: fallback reply)"))


def main(argv=None) -> None:
    a = parser().parse_args(argv)
    work, data = a.workdir.resolve(), a.data_dir
    init_ray(a.address, a.workers * a.cpus_per_worker)
    train = ["--storage-path", str(work / "ray"), "--workers", str(a.workers),
             "--gpus-per-worker", str(a.gpus_per_worker), "--cpus-per-worker", str(a.cpus_per_worker),
             "--batch-size", str(a.batch_size), "--seq-len", str(a.seq_len)]
    tok, pre, ft, safe, ft2 = (work / "tokenizer.model", work / "pretrained", work / "finetuned",
                               work / "safe_dialogs", work / "finetuned_safe")
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
    ]
    for i, (name, done_marker, run) in enumerate(stages, 1):
        print(f"[{i}/{len(stages) + 1}] {name}", flush=True)
        if done_marker.exists():
            print(f"  exists: {done_marker}")
        else:
            run()
    print(f"[{len(stages) + 1}/{len(stages) + 1}] example turn (sample-and-rank)", flush=True)
    print(example_turn(ft2, data))
    print(f"pipeline done: {ft2}")


if __name__ == "__main__":
    main()
