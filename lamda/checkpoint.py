"""Exported models: a directory holding `model.safetensors`, `config.json`, `tokenizer.model` and
`manifest.json` (written last; it lists the files and their sizes).

A training run exports its weights sharded instead (`save_sharded_export`): files
`model-00001-of-0000N.safetensors` of whole tensors, each written by one rank, and
`model.safetensors.index.json` mapping every tensor to its file (the layout the Hugging Face
ecosystem reads). No rank ever holds more than one file's tensors. Loaders read either layout,
one file at a time.

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
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from lamda.config import ModelConfig
from lamda.model import LaMDA, build_model
from lamda.storage import cached, download_dir, fetch_file, is_s3, join, upload_dir
from lamda.tokenizer import Tokenizer

WEIGHTS, CONFIG, TOKENIZER, MANIFEST = "model.safetensors", "config.json", "tokenizer.model", "manifest.json"
INDEX = "model.safetensors.index.json"  # the sharded layout's tensor -> file map
TRAIN_STATE = "train_state.json"  # in training checkpoints, next to the DCP shards


def _write_export(d: Path, state: dict, cfg: ModelConfig, tok: Tokenizer, extra: dict | None) -> None:
    save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, str(d / WEIGHTS))
    _write_header(d, cfg, tok, extra, [WEIGHTS])


def _write_header(d: Path, cfg: ModelConfig, tok: Tokenizer, extra: dict | None,
                  weights: list[str], sizes: dict[str, int] | None = None) -> None:
    """Config, tokenizer and the manifest (last) next to the weight files already in `d` (or,
    for files uploaded elsewhere, of the given `sizes`)."""
    cfg.save(d / CONFIG)
    tok.save(d / TOKENIZER)
    files = {**(sizes or {}), **{n: (d / n).stat().st_size for n in [*weights, CONFIG, TOKENIZER]
                                 if (d / n).is_file()}}
    (d / MANIFEST).write_text(json.dumps({"files": files, **(extra or {})}, indent=2))


def _replace_dir(tmp: Path, path: Path) -> None:
    """Put the finished directory `tmp` at `path`, replacing what was there."""
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


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
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return str(path)


def shard_plan(sizes: dict[str, int], max_bytes: int) -> list[list[str]]:
    """Tensor names, in order, packed into files of at most `max_bytes` (a larger tensor gets a
    file to itself)."""
    files, current, used = [], [], 0
    for name, n in sizes.items():
        if current and used + n > max_bytes:
            files.append(current)
            current, used = [], 0
        current.append(name)
        used += n
    return files + [current] if current else files


def shard_file(i: int, n: int) -> str:
    return f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def save_sharded_export(path: str | os.PathLike, model: torch.nn.Module, cfg: ModelConfig,
                        tok: Tokenizer, max_bytes: int, extra: dict | None = None) -> str:
    """A sharded export of `model` (FSDP2 DTensors or plain tensors), called by every rank
    together. The files go round-robin to the ranks; for each tensor all ranks join one
    all-gather and only its file's rank keeps the result, writing the file once it is complete,
    so no rank holds more than one file. Rank 0 then writes the index, config, tokenizer and the
    manifest last (local: into the staging directory, renamed into place in one step; S3:
    uploaded after every shard). A local path must be one file system for all ranks."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    state = get_model_state_dict(model) if distributed else model.state_dict()
    sizes = {k: v.numel() * v.element_size() for k, v in state.items()}  # DTensor: global sizes
    plan = shard_plan(sizes, max_bytes)
    files = [shard_file(i, len(plan)) for i in range(len(plan))]
    local = None if is_s3(path) else Path(path)
    if local is not None:
        local.parent.mkdir(parents=True, exist_ok=True)
        staging = local.with_name(f".{local.name}.tmp-sharded")
        if rank == 0:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
        _barrier(distributed)
    with tempfile.TemporaryDirectory() as scratch:
        out = staging if local is not None else Path(scratch)
        written = {}
        for i, names in enumerate(plan):
            mine = i % world == rank
            tensors = {}
            for name in names:
                v = state[name]
                full = v.full_tensor() if hasattr(v, "full_tensor") else v  # collective
                if mine:
                    tensors[name] = full.detach().to("cpu").contiguous()
            if mine:
                save_file(tensors, str(out / files[i]))
                written[files[i]] = (out / files[i]).stat().st_size
        if local is None:
            upload_dir(scratch, str(path))
        every = [written]
        if distributed:
            every = [None] * world
            dist.all_gather_object(every, written)
    if rank == 0:
        with tempfile.TemporaryDirectory() as scratch:
            d = staging if local is not None else Path(scratch)
            index = {"metadata": {"total_size": sum(sizes.values())},
                     "weight_map": {n: files[i] for i, names in enumerate(plan) for n in names}}
            (d / INDEX).write_text(json.dumps(index, indent=2))
            _write_header(d, cfg, tok, extra, [INDEX], sizes={k: v for w in every for k, v in w.items()})
            if local is None:
                upload_dir(scratch, str(path), last=(MANIFEST,))
            else:
                _replace_dir(staging, local)
    _barrier(distributed)
    return str(path)


def _barrier(distributed: bool) -> None:
    if distributed:
        dist.barrier()


def weight_files(path: Path) -> list[str]:
    """An export's weight files: the shards its index names, or the single file."""
    if (path / INDEX).is_file():
        return sorted(set(json.loads((path / INDEX).read_text())["weight_map"].values()))
    return [WEIGHTS]


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
    missing = [n for n in (CONFIG, TOKENIZER, MANIFEST) if not (path / n).is_file()]
    missing += [n for n in weight_files(path) if not (path / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} is not a complete export: missing {', '.join(missing)}")
    sizes = json.loads((path / MANIFEST).read_text()).get("files", {})
    wrong = [n for n, size in sizes.items() if (path / n).stat().st_size != size]
    if wrong:
        raise ValueError(f"{path} is not a complete export: {', '.join(wrong)} differ from the manifest")
    cfg = ModelConfig.load(path / CONFIG)
    tok = Tokenizer.load(path / TOKENIZER)
    model = build_model(cfg, device="meta")
    missing = set(model.state_dict())
    for name in weight_files(path):  # one file at a time
        try:
            state = load_file(str(path / name), device=str(device))
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise ValueError(f"{path / name}: unreadable weights ({e})") from e
        try:
            unexpected = model.load_state_dict(state, strict=False, assign=True).unexpected_keys
        except RuntimeError as e:
            raise ValueError(f"{path}: weights do not match config.json ({e})") from e
        if unexpected:
            raise ValueError(f"{path}: weights do not match config.json (unexpected {unexpected})")
        missing -= set(state)
    if missing:
        raise ValueError(f"{path}: weights do not match config.json (missing {sorted(missing)})")
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
    model = load_checkpoint_and_dispatch(model, str(path), device_map=device_map,  # file or index
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
