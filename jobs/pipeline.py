"""The LaMDA pipeline on one machine: tokenizer -> pre-training (more stages follow).

    python -m jobs.pipeline [--workdir runs/local] [--preset tiny] [--steps 200]

Stages whose output exists are skipped (delete the workdir to start over). Pre-training here runs
in this process on the CPU; the Ray Train job (sharded, multi-worker) replaces it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from jobs.train_tokenizer import train_tokenizer
from lamda.checkpoint import save_export
from lamda.config import PRESETS, ModelConfig
from lamda.data import SAMPLE_DIR, dialog_ids, document_ids, pack_pretraining, read_jsonl
from lamda.model import build_model
from lamda.tokenizer import Tokenizer
from lamda.training import TrainConfig, batches_of, train_local


def pretrain_local(tok: Tokenizer, data_dir: Path, preset: str, cfg: TrainConfig, out: Path) -> None:
    docs = [document_ids(tok, d) for d in read_jsonl(data_dir / "documents.jsonl", "document")]
    dlgs = [dialog_ids(tok, d) for d in read_jsonl(data_dir / "dialogs.jsonl", "dialog")]
    seqs = list(pack_pretraining(docs, dlgs, cfg.seq_len, cfg.dialog_fraction))
    model_cfg = ModelConfig.from_name(preset, vocab_size=tok.vocab_size,
                                      max_seq_len=max(cfg.seq_len, PRESETS[preset].max_seq_len))
    torch.manual_seed(cfg.seed)
    model = build_model(model_cfg)
    print(f"pre-training {preset}: {model_cfg.num_params(non_embedding=False):,} parameters, "
          f"{len(seqs)} sequences of {cfg.seq_len} tokens, {cfg.steps} steps of "
          f"{cfg.batch_size} x {cfg.seq_len}")
    history = train_local(model, batches_of(seqs, cfg.batch_size, cfg.seed), cfg)
    save_export(out, model.state_dict(), model_cfg, tok,
                extra={"stage": "pretrain", "steps": cfg.steps, "final_loss": history[-1]["loss"]})
    print(f"loss {history[0]['loss']:.3f} -> {history[-1]['loss']:.3f}; exported to {out}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("runs/local"), help="outputs of every stage")
    p.add_argument("--data-dir", type=Path, default=SAMPLE_DIR, help="corpus (bundled sample)")
    p.add_argument("--preset", default="tiny", choices=list(PRESETS), help="model size")
    p.add_argument("--vocab-size", type=int, default=4096, help="tokenizer vocabulary")
    p.add_argument("--steps", type=int, default=200, help="pre-training steps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    return p


def main(argv=None) -> None:
    a = parser().parse_args(argv)
    tok_path = a.workdir / "tokenizer.model"
    print("[1/2] tokenizer")
    if tok_path.exists():
        tok = Tokenizer.load(tok_path)
        print(f"  exists: {tok_path}")
    else:
        tok = train_tokenizer([a.data_dir / "documents.jsonl"], [a.data_dir / "dialogs.jsonl"],
                              a.vocab_size, tok_path)
    print("[2/2] pre-training")
    out = a.workdir / "pretrained"
    if (out / "model.safetensors").exists():
        print(f"  exists: {out}")
        return
    cfg = TrainConfig(steps=a.steps, batch_size=a.batch_size, seq_len=a.seq_len, lr=a.lr,
                      warmup_steps=max(1, a.steps // 10), log_every=max(1, a.steps // 10))
    pretrain_local(tok, a.data_dir, a.preset, cfg, out)


if __name__ == "__main__":
    main()
