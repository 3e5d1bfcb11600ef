import json

import pytest
import torch

from lamda.checkpoint import (load_export, load_export_dispatched, save_export, save_sharded_export,
                              shard_plan)
from lamda.config import ModelConfig
from lamda.model import build_model


@pytest.fixture()
def model(tok):
    torch.manual_seed(0)
    return build_model(ModelConfig.from_name("debug", vocab_size=tok.vocab_size)).eval()


def test_export_loads_with_identical_logits(model, tok, tmp_path):
    save_export(tmp_path / "m", model.state_dict(), model.cfg, tok, extra={"stage": "test"})
    loaded, tok2 = load_export(tmp_path / "m")
    x = torch.randint(0, tok.vocab_size, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)
    assert loaded.cfg == model.cfg and tok2.special_ids == tok.special_ids


def test_missing_files_are_a_clear_error(model, tok, tmp_path):
    save_export(tmp_path / "m", model.state_dict(), model.cfg, tok)
    (tmp_path / "m" / "tokenizer.model").unlink()
    with pytest.raises(FileNotFoundError, match="missing tokenizer.model"):
        load_export(tmp_path / "m")


def test_corrupt_weights_are_a_clear_error(model, tok, tmp_path):
    save_export(tmp_path / "m", model.state_dict(), model.cfg, tok)
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(b"\xff" * weights.stat().st_size)  # same size, garbage header
    with pytest.raises(ValueError, match="unreadable weights"):
        load_export(tmp_path / "m")
    weights.write_bytes(b"\x00" * 64)  # truncated
    with pytest.raises(ValueError, match="model.safetensors differ from the manifest"):
        load_export(tmp_path / "m")


def test_weights_must_match_the_config(model, tok, tmp_path):
    save_export(tmp_path / "m", model.state_dict(), model.cfg, tok)
    ModelConfig.from_name("debug", vocab_size=tok.vocab_size, n_layer=3).save(tmp_path / "m" / "config.json")
    with pytest.raises(ValueError, match="do not match config.json"):
        load_export(tmp_path / "m")


def test_a_failed_export_leaves_the_old_one_intact(model, tok, tmp_path, monkeypatch):
    save_export(tmp_path / "m", model.state_dict(), model.cfg, tok)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("lamda.checkpoint.save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_export(tmp_path / "m", model.state_dict(), model.cfg, tok)
    load_export(tmp_path / "m")  # the previous export still loads
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary left behind


def test_accelerate_big_model_loading_matches_the_plain_load(model, tok, tmp_path):
    """The dispatched path (empty weights + load_checkpoint_and_dispatch, per-layer cache devices)
    gives the same logits and decodes; here every block lands on the CPU."""
    from lamda.checkpoint import load_export_dispatched
    from lamda.decode import SamplingConfig, generate
    save_export(tmp_path / "m", model.state_dict(), model.cfg, tok)
    dispatched, _ = load_export_dispatched(tmp_path / "m", device_map="auto",
                                           max_memory={"cpu": "1GiB"})
    assert all(p.device.type == "cpu" for p in dispatched.parameters())
    x = torch.randint(0, tok.vocab_size, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(dispatched(x), model(x), atol=0, rtol=0)
    cfg = SamplingConfig(num_candidates=2, max_new_tokens=4, seed=0)
    a = generate(dispatched, tok, [[5, 6, 7]], cfg).candidates[0]
    b = generate(model, tok, [[5, 6, 7]], cfg).candidates[0]
    assert [c.ids for c in a] == [c.ids for c in b]


def test_a_sharded_export_has_an_index_and_loads_like_one_file(model, tok, tmp_path):
    """Whole tensors packed into files of at most max_bytes, the Hugging Face index beside them;
    load_export and Accelerate's dispatched loading read them one file at a time."""
    save_sharded_export(tmp_path / "s", model, model.cfg, tok, max_bytes=100_000, extra={"step": 3})
    d = tmp_path / "s"
    index = json.loads((d / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert set(index["weight_map"]) == set(model.state_dict())
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in model.state_dict().values())
    assert not (d / "model.safetensors").exists() and [p.name for p in tmp_path.iterdir()] == ["s"]
    manifest = json.loads((d / "manifest.json").read_text())
    assert set(files) <= set(manifest["files"]) and manifest["step"] == 3
    x = torch.randint(0, tok.vocab_size, (2, 12))
    loaded, _ = load_export(d)
    dispatched, _ = load_export_dispatched(d, device_map={"": "cpu"})
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)
        torch.testing.assert_close(dispatched(x), model(x), atol=0, rtol=0)
    (d / files[1]).unlink()
    with pytest.raises(FileNotFoundError, match=f"missing {files[1]}"):
        load_export(d)


def test_the_shard_plan_packs_tensors_in_order():
    assert shard_plan({"a": 4, "b": 4, "c": 9, "d": 1}, 8) == [["a", "b"], ["c"], ["d"]]
