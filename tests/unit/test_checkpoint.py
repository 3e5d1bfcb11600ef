import pytest
import torch

from lamda.checkpoint import load_export, save_export
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
