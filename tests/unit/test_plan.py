import dataclasses
import json

import pytest

from lamda import plan as P
from lamda.config import ModelConfig

GIB = 2**30
# bench/RESULTS.md: `2b` on one H200 (bench/train_step.py, max_memory_allocated / 2**30), bf16
# parameters and AdamW states, compiled, flex attention, no activation checkpointing
TWO_B = P.PlanInputs(preset="2b", gpus=1, gpu="h200", batch_size=16, seq_len=1024)


@pytest.mark.parametrize("batch,gib", [(16, 42.5), (8, 29.3)])
def test_2b_peak_memory_matches_the_measured(batch, gib):
    r = P.plan(dataclasses.replace(TWO_B, batch_size=batch))
    assert r["memory_gib_per_gpu"] == pytest.approx(gib, rel=0.15)
    assert r["fits"]


def test_2b_step_time_matches_the_measured():
    r = P.plan(dataclasses.replace(TWO_B, mfu=0.562))
    assert r["step_time_s"] == pytest.approx(0.389, rel=0.15)
    assert P.plan(TWO_B)["mfu"] == 0.562  # the measured MFU is the H200's default


def test_137b_on_tpu_v3_gives_the_papers_days_and_energy():
    # Paper §10: 1024 TPU-v3 chips at 56.5% of 123 TFLOP/s for 57.7 days = 3.55E+23 FLOPs,
    # 451 MWh. At 6N + attention FLOPs per token that compute is about 0.42T tokens.
    cfg = ModelConfig.from_name("137b")
    tokens = 3.55e23 / cfg.flops_per_token(2048)
    paper = P.PlanInputs(preset="137b", gpus=1024, gpu="tpu-v3", tokens=tokens, mfu=0.565)
    r = P.plan(paper)
    assert r["days"] == pytest.approx(57.7, rel=0.15)
    assert r["energy_mwh"] == pytest.approx(451, rel=0.15)
    assert r["co2_t"] == pytest.approx(25.2, rel=0.15)
    # the whole 2.81T-token pre-training set would take 6.7x as long: more than that run saw
    whole = P.plan(dataclasses.replace(paper, tokens=2.81e12))
    assert whole["days"] == pytest.approx(r["days"] * 2.81e12 / tokens, rel=1e-6)


def test_sharding_divides_states_over_devices():
    p = P.PlanInputs(preset="137b", gpus=64, gpu="h100", tp=8, batch_size=1)
    a, b = P.memory(p), P.memory(dataclasses.replace(p, gpus=128))
    for key in ("params", "grads", "optimizer"):
        assert b[key] == pytest.approx(a[key] / 2)
    assert b["activations"] == a["activations"]  # same batch per rank


def test_tensor_parallel_splits_the_block_but_not_the_residual_stream():
    cfg = ModelConfig.from_name("8b")
    residual = 4 * cfg.d_model * 2 + 8  # block input, the two norm outputs, mid residual; scales
    one, two = (P.layer_bytes_per_token(cfg, tp, 2) for tp in (1, 2))
    assert two - residual == pytest.approx((one - residual) / 2)
    assert two > one / 2
    p = P.PlanInputs(preset="8b", gpus=8, gpu="h100", batch_size=2)
    assert P.memory(dataclasses.replace(p, tp=2))["activations"] < P.memory(p)["activations"]


def test_activation_checkpointing_lowers_activation_memory_and_decides_fits():
    p = P.PlanInputs(preset="8b", gpus=8, gpu="h100", batch_size=16)
    m = P.memory(p)
    assert m["activations_checkpointed"] < m["activations"] / 4
    assert not P.fits(p)
    ckpt = dataclasses.replace(p, activation_checkpointing=True)
    assert P.fits(ckpt)
    assert P.compute_seconds(ckpt) == pytest.approx(P.compute_seconds(p) * 4 / 3)


def test_communication():
    assert P.ring_bytes("all-reduce", 8, 800) == 1400
    assert P.ring_bytes("all-gather", 8, 800) == P.ring_bytes("reduce-scatter", 8, 800) == 700
    c = P.comm(TWO_B)
    assert c["fsdp_bytes"] == c["tp_bytes"] == 0  # one GPU: no sharding
    p = P.PlanInputs(preset="8b", gpus=16, gpu="h100", tp=8, batch_size=1)
    c = P.comm(p)
    cfg = ModelConfig.from_name("8b")  # blocks split over tp 8, the embedding whole
    shard = (cfg.num_params(non_embedding=True) / 8
             + cfg.num_params(non_embedding=False) - cfg.num_params(non_embedding=True))
    assert c["fsdp_bytes"] == pytest.approx(3 * shard * 2 / 2)  # two gathers + one scatter, dp 2
    assert c["fsdp_s"] == pytest.approx(c["fsdp_bytes"] / 50e9)  # dp group spans nodes
    assert P.step_seconds(p) == max(P.compute_seconds(p), c["fsdp_s"] + c["tp_s"])


def test_smallest_layout_for_137b_on_h100():
    p = P.PlanInputs(preset="137b", gpus=1024, gpu="h100", tp=8, tokens=2.81e12)
    small = P.smallest_layout(p)
    assert small is not None and 8 <= small["gpus"] <= 64
    q = dataclasses.replace(p, gpus=small["gpus"], tp=small["tp"], batch_size=P.batch_size(p))
    assert P.fits(q)
    for tp in P.TP_DEGREES:  # one step smaller fits with no tp
        if tp <= small["gpus"] // 2:
            assert not P.fits(dataclasses.replace(q, gpus=small["gpus"] // 2, tp=tp))


def test_json_is_one_object_with_the_required_keys(capsys):
    P.main(["--preset", "137b", "--gpus", "1024", "--gpu", "h100", "--tp", "8",
            "--tokens", "2.81e12", "--json"])
    r = json.loads(capsys.readouterr().out)
    for key in ("fits", "memory_gib_per_gpu", "step_time_s", "days", "energy_mwh", "co2_t",
                "memory_breakdown_gib", "tokens_per_step", "comm_bytes", "smallest_layout"):
        assert key in r
    assert r["fits"] and r["tokens_per_step"] == 262144  # the paper's batch: 1 x 2048 x 128 ranks


def test_table_and_errors(capsys):
    P.main(["--preset", "2b", "--gpu", "NVIDIA H200", "--batch-size", "16", "--seq-len", "1024"])
    out = capsys.readouterr().out
    assert "peak memory" in out and "fits" in out and "389 ms" in out
    assert P.device_name("NVIDIA H100 80GB HBM3") == "h100"
    with pytest.raises(SystemExit):
        P.main(["--gpus", "4", "--tp", "8"])
    assert "multiple of --tp" in capsys.readouterr().err
