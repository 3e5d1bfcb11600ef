import pytest
import torch

from lamda.config import DEFAULT_LAUNCH, PRESETS, AttentionKernels, ModelConfig
from lamda.model import build_model


@pytest.mark.parametrize("name", list(PRESETS))
def test_num_params_matches_the_model_built_on_meta(name):
    cfg = ModelConfig.from_name(name)
    model = build_model(cfg, device="meta")  # allocates nothing, even for 137b
    assert all(p.device.type == "meta" for p in model.parameters())
    total = sum(p.numel() for p in model.parameters())
    embedding = model.embed.weight.numel() + model.rel_bias.weight.numel()
    assert cfg.num_params(non_embedding=False) == total
    assert cfg.num_params(non_embedding=True) == total - embedding


@pytest.mark.parametrize("name,billions", [("2b", 2.1), ("8b", 8.6), ("137b", 137.4)])
def test_paper_sizes(name, billions):
    assert ModelConfig.from_name(name).num_params() / 1e9 == pytest.approx(billions, abs=0.05)


def test_137b_shape_is_the_papers():
    c = ModelConfig.from_name("137b")
    assert (c.n_layer, c.d_model, c.n_head, c.d_kv, c.d_ff) == (64, 8192, 128, 128, 65536)
    assert c.d_attn == 2 * c.d_model and c.d_ff == 8 * c.d_model
    assert (c.rel_buckets, c.rel_max_distance, c.vocab_size) == (32, 128, 32000)


def test_flops_per_token_palm_convention():
    c = ModelConfig.from_name("137b")
    n = c.num_params(non_embedding=True)
    assert c.flops_per_token(2048) == 6 * n + 12 * 64 * 128 * 128 * 2048


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        ModelConfig.from_name("huge")
    with pytest.raises(ValueError, match="rel_max_distance"):  # T5 bucketing would divide by 0
        ModelConfig.from_name("tiny", rel_buckets=32, rel_max_distance=16)


def test_config_round_trips_through_json(tmp_path):
    c = ModelConfig.from_name("tiny", dropout=0.1)
    c.save(tmp_path / "config.json")
    assert ModelConfig.load(tmp_path / "config.json") == c
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        ModelConfig.from_dict({**c.to_dict(), "bogus": 1})


def test_kernel_settings_travel_with_the_config(tmp_path):
    kernels = AttentionKernels(flex_options="bwd_num_warps=8,ROWS_GUARANTEED_SAFE=true",
                               near_table=False, bias_grad="rows", far="cudnn", launch="dq=4.1.2048")
    c = ModelConfig.from_name("tiny", attn_kernels=kernels)
    c.save(tmp_path / "config.json")  # as checkpoints and exported models save it
    assert ModelConfig.load(tmp_path / "config.json").attn_kernels == kernels
    assert kernels.flex_kernel_options() == {"bwd_num_warps": 8, "ROWS_GUARANTEED_SAFE": True}
    assert kernels.launch_settings() == {**DEFAULT_LAUNCH, "dq": (4, 1, 2048)}
    old = {k: v for k, v in c.to_dict().items() if k != "attn_kernels"}  # saved before the field
    assert ModelConfig.from_dict(old).attn_kernels == AttentionKernels()
    with pytest.raises(ValueError, match="unknown AttentionKernels fields"):
        ModelConfig.from_dict({**c.to_dict(), "attn_kernels": {"warps": 8}})


@pytest.mark.parametrize("bad,match", [
    ({"bias_grad": "fast"}, "bias_grad must be"), ({"far": "xformers"}, "far must be"),
    ({"launch": "dq=4.1"}, r"dq=N\.N\.N"), ({"launch": "warp=4.1"}, "is not one of"),
    ({"launch": "dq=4.x.1"}, "not an integer"), ({"flex_options": "BLOCK_M"}, "name=value"),
])
def test_bad_kernel_settings_are_refused_when_made(bad, match):
    with pytest.raises(ValueError, match=match):
        AttentionKernels(**bad)


def test_overrides():
    assert ModelConfig.from_name("debug", vocab_size=77).vocab_size == 77
    assert torch.Size  # torch imports cleanly alongside config
