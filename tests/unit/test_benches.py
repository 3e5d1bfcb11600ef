"""The training benchmarks run and print what they promise (on CPU, at toy sizes): they are run
rarely and on GPUs, so a change that breaks them shows here first."""

import json

import pytest

from bench import band_kernels, train_step


def json_lines(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_train_step_bench_runs_with_the_kernel_settings_it_is_given(capsys):
    train_step.main(["--preset", "debug", "--steps", "1", "--warmup", "0", "--batch-size", "2",
                     "--seq-len", "32", "--attn-backend", "sdpa,nobias", "--flex-options", "",
                     "--launch", "dq=4.1.64", "--bias-grad", "rows"])
    *rows, speed = json_lines(capsys)
    assert [r["attn_backend"] for r in rows] == ["sdpa", "nobias"]
    assert all(r["step_s"] > 0 and r["tokens_per_s"] > 0 for r in rows), rows
    assert rows[0]["attn_kernels"] == {"flex_options": "", "near_table": True, "bias_grad": "rows",
                                       "far": "flash", "launch": "dq=4.1.64"}  # in the model's config
    assert set(speed["speed_vs_sdpa"]) == {"sdpa", "nobias"}
    with pytest.raises(ValueError, match="launch"):  # a bad setting is refused, not ignored
        train_step.main(["--preset", "debug", "--steps", "1", "--launch", "dq=4"])


def test_band_kernels_bench_runs_each_setting(capsys):
    pytest.importorskip("triton")
    band_kernels.main(["--device", "cpu", "--shape", "1,1,32,16", "--window", "32",
                       "--bias-grad", "rows:4.1.8;tiles:4.2.8", "--dq", "4.1.8"])
    rows = json_lines(capsys)
    assert [r.get("bias_grad") or r.get("dq") for r in rows] == ["rows:4.1.8", "tiles:4.2.8", "4.1.8"]
    assert all("ms" in r for r in rows), rows
