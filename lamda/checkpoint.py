"""Exported models: a directory holding `model.safetensors`, `config.json` and `tokenizer.model`.

Written into a temporary sibling directory and renamed into place, so a reader finds either the
whole export or none. Loading never unpickles: safetensors for weights, JSON for the config.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lamda.config import ModelConfig
from lamda.model import LaMDA, build_model
from lamda.tokenizer import Tokenizer

WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer.model"


def save_export(path: str | os.PathLike, model: LaMDA, tok: Tokenizer, extra: dict | None = None) -> Path:
    """Write model weights, config and tokenizer to `path` atomically (replacing an old export)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp"))
    try:
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS))
        model.cfg.save(tmp / CONFIG)
        tok.save(tmp / TOKENIZER)
        if extra:
            (tmp / "meta.json").write_text(json.dumps(extra, indent=2))
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_export(path: str | os.PathLike, device: str | torch.device = "cpu",
                dtype: torch.dtype | None = None) -> tuple[LaMDA, Tokenizer]:
    """The model (eval mode) and tokenizer of an export; a clear error when files are missing or
    do not match the config."""
    path = Path(path)
    missing = [n for n in (WEIGHTS, CONFIG, TOKENIZER) if not (path / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} is not a complete export: missing {', '.join(missing)}")
    cfg = ModelConfig.load(path / CONFIG)
    tok = Tokenizer.load(path / TOKENIZER)
    try:
        state = load_file(str(path / WEIGHTS), device=str(device))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{path / WEIGHTS}: unreadable weights ({e})") from e
    model = build_model(cfg, device="meta")
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not match config.json ({e})") from e
    if dtype is not None:
        model = model.to(dtype)
    return model.eval(), tok
