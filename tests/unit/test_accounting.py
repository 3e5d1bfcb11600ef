import pytest

from lamda import accounting as A
from lamda.config import ModelConfig


def test_reproduces_the_papers_137b_figures():
    r = A.run_report(chips=1024, seconds=57.7 * 86400, peak_flops=123e12, utilisation=0.565,
                     watts=289, pue=1.10, kg_per_kwh=0.056)
    assert r.flops == pytest.approx(3.55e23, rel=0.005)
    assert r.mwh == pytest.approx(451, rel=0.005)
    assert r.tco2e == pytest.approx(25.2, rel=0.005)


def test_cli_prints_the_table(capsys):
    A.main([])
    out = capsys.readouterr().out
    assert "3.55E+23 FLOPs" in out and "451 MWh" in out and "25.2 tCO2e" in out


def test_hardware_by_device_name():
    assert A.hardware("NVIDIA H100 80GB HBM3") == A.HARDWARE["h100"]
    assert A.hardware("NVIDIA H200") == A.HARDWARE["h200"]
    assert A.hardware("TPU-v3") == A.HARDWARE["tpu-v3"]
    with pytest.raises(ValueError, match="unknown hardware"):
        A.hardware("abacus")


def test_flops_and_mfu():
    cfg = ModelConfig.from_name("350m")
    assert A.training_flops(cfg, 1000, 1024) == 1000 * cfg.flops_per_token(1024)
    assert A.inference_flops_per_token(cfg, 0) == 2 * cfg.num_params()
    assert A.mfu(flops=5e14, seconds=1.0, chips=1, peak_flops=1e15) == 0.5


def test_modelled_energy_meter_without_a_gpu():
    meter = A.EnergyMeter(watts=3.6e6, chips=1)  # 1 kWh per second
    if meter.measured:
        pytest.skip("a GPU with an energy counter is present")
    assert 0 < meter.kwh() < 1.0
