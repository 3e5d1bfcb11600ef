"""Exported models: a directory holding `model.safetensors`, `config.json`, `tokenizer.model` and
`manifest.json` (written last; it lists the files and their sizes).

Locally an export is written into a temporary sibling directory and renamed into place; on S3 the
manifest is uploaded after everything else. Either way a reader finds the whole export or an error,
never a half-written one. Loading never unpickles: safetensors for weights, JSON for the config.
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
from lamda.storage import cached, download_dir, fetch_file, is_s3, join, upload_dir
from lamda.tokenizer import Tokenizer

WEIGHTS, CONFIG, TOKENIZER, MANIFEST = "model.safetensors", "config.json", "tokenizer.model", "manifest.json"
TRAIN_STATE = "train_state.json"  # in training checkpoints, next to the DCP shards


def _write_export(d: Path, state: dict, cfg: ModelConfig, tok: Tokenizer, extra: dict | None) -> None:
    save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, str(d / WEIGHTS))
    cfg.save(d / CONFIG)
    tok.save(d / TOKENIZER)
    files = {n: (d / n).stat().st_size for n in (WEIGHTS, CONFIG, TOKENIZER)}
    (d / MANIFEST).write_text(json.dumps({"files": files, **(extra or {})}, indent=2))


def save_export(path: str | os.PathLike, state: dict, cfg: ModelConfig, tok: Tokenizer,
                extra: dict | None = None) -> str:
    """Write a state dict (full, unsharded), its config and tokenizer to a local path or an s3://
    URI, replacing an older export there. `extra` goes into the manifest (e.g. the step)."""
    if is_s3(path):
        with tempfile.TemporaryDirectory() as d:
            _write_export(Path(d), state, cfg, tok, extra)
            upload_dir(d, str(path), last=(MANIFEST,))
        return str(path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp"))
    try:
        _write_export(tmp, state, cfg, tok, extra)
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
    return str(path)


def read_export_header(path: str | os.PathLike) -> tuple[ModelConfig, Tokenizer]:
    """The config and tokenizer of an export (local or s3://) without reading its weights."""
    with tempfile.TemporaryDirectory() as d:
        files = {n: fetch_file(join(path, n), d) for n in (MANIFEST, CONFIG, TOKENIZER)}
        return ModelConfig.load(files[CONFIG]), Tokenizer.load(files[TOKENIZER])


def load_export(path: str | os.PathLike, device: str | torch.device = "cpu",
                dtype: torch.dtype | None = None) -> tuple[LaMDA, Tokenizer]:
    """The model (eval mode) and tokenizer of an export (local path or s3:// URI); a clear error
    when it is incomplete or its weights do not match its config."""
    path = cached(path)  # an s3:// export: fetched once per node
    missing = [n for n in (WEIGHTS, CONFIG, TOKENIZER, MANIFEST) if not (path / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} is not a complete export: missing {', '.join(missing)}")
    sizes = json.loads((path / MANIFEST).read_text()).get("files", {})
    wrong = [n for n, size in sizes.items() if (path / n).stat().st_size != size]
    if wrong:
        raise ValueError(f"{path} is not a complete export: {', '.join(wrong)} differ from the manifest")
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


def load_export_dispatched(path: str | os.PathLike, dtype: torch.dtype | None = None,
                           device_map: str | dict = "auto", max_memory: dict | None = None
                           ) -> tuple[LaMDA, Tokenizer]:
    """A model too large for one device, spread over the visible GPUs (then CPU) block by block
    with Accelerate's big-model loading: built with empty weights, then each block's tensors
    loaded straight onto its device. Decoding keeps each layer's KV cache on that layer's device."""
    from accelerate import init_empty_weights, load_checkpoint_and_dispatch
    path = cached(path)
    cfg, tok = read_export_header(path)
    with init_empty_weights():
        model = LaMDA(cfg)
    model = load_checkpoint_and_dispatch(model, str(path / WEIGHTS), device_map=device_map,
                                         max_memory=max_memory, no_split_module_classes=["Block"],
                                         dtype=dtype)
    return model.eval(), tok


# -- training checkpoints (torch.distributed.checkpoint shards, see lamda.ray_train) --------------

def check_checkpoint_dir(d: str | os.PathLike) -> None:
    """A clear error unless `d` holds a complete training checkpoint."""
    d = Path(d)
    if not d.is_dir():
        raise FileNotFoundError(f"no checkpoint at {d}")
    missing = [n for n in (".metadata", TRAIN_STATE, CONFIG, TOKENIZER) if not (d / n).is_file()]
    if missing:
        raise ValueError(f"{d} is not a complete checkpoint: missing {', '.join(missing)}")


def export_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike) -> str:
    """Consolidate a sharded training checkpoint (local or s3://) into an export at `out`.
    Runs in one process without a process group: DCP reshards on load."""
    import torch.distributed.checkpoint as dcp
    if is_s3(checkpoint):
        with tempfile.TemporaryDirectory() as d:
            return export_checkpoint(download_dir(str(checkpoint), d), out)
    check_checkpoint_dir(checkpoint)
    d = Path(checkpoint)
    cfg, tok = ModelConfig.load(d / CONFIG), Tokenizer.load(d / TOKENIZER)
    model = build_model(cfg)
    state = {"model": model.state_dict()}
    try:
        dcp.load(state, checkpoint_id=str(d))
    except (Exception, dcp.api.CheckpointException) as e:  # the latter is a BaseException
        raise ValueError(f"{d}: unreadable checkpoint ({type(e).__name__}: {str(e)[:300]})") from e
    train_state = json.loads((d / TRAIN_STATE).read_text())
    return save_export(out, state["model"], cfg, tok,
                       extra={"step": train_state.get("step"), "from_checkpoint": str(checkpoint)})
