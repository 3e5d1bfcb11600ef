"""FLOPs, model FLOPs utilisation, energy and carbon: the one place these formulas live.

    python -m lamda.accounting            # paper §10 for the 137B pre-training run
    python -m lamda.accounting --hardware h100 --chips 8 --days 2 --utilisation 0.4

Training FLOPs follow the PaLM convention (ModelConfig.flops_per_token). Energy is measured with
NVML's total-energy counter when a GPU is present (EnergyMeter), otherwise modelled as
devices x watts x hours x PUE. Carbon is energy x grid intensity.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

from lamda.config import ModelConfig

SECONDS_PER_DAY = 86400.0


@dataclass(frozen=True)
class Hardware:
    peak_flops: float  # dense bf16 FLOP/s per chip (no sparsity)
    watts: float  # typical power per chip under training load, for modelled energy


HARDWARE: dict[str, Hardware] = {
    "h100": Hardware(peak_flops=989e12, watts=700.0),  # SXM
    "h200": Hardware(peak_flops=989e12, watts=700.0),  # same compute as H100, more memory
    "a100": Hardware(peak_flops=312e12, watts=400.0),
    "tpu-v3": Hardware(peak_flops=123e12, watts=289.0),  # paper §10: 123 TFLOPS/s, 289 W measured
    "cpu": Hardware(peak_flops=1e12, watts=65.0),  # a nominal figure; CPU MFU is only indicative
}


def hardware(name: str) -> Hardware:
    key = name.lower()
    for known in HARDWARE:  # "NVIDIA H100 80GB HBM3" -> h100
        if known in key.replace(" ", "-") or known.replace("-", "") in key.replace(" ", ""):
            return HARDWARE[known]
    raise ValueError(f"unknown hardware {name!r}; known: {', '.join(HARDWARE)}")


def training_flops(cfg: ModelConfig, tokens: float, seq_len: int) -> float:
    """FLOPs to train on `tokens` tokens at sequence length `seq_len` (forward + backward)."""
    return cfg.flops_per_token(seq_len) * tokens


def inference_flops_per_token(cfg: ModelConfig, context_len: int) -> float:
    """Forward FLOPs for one token attending to `context_len` keys: 2N + 4 L H d_kv context_len.
    The same for a generated token and for a token scored by a discriminator."""
    return 2 * cfg.num_params(non_embedding=True) + 4 * cfg.n_layer * cfg.d_attn * context_len


def mfu(flops: float, seconds: float, chips: int, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the chips' peak."""
    return flops / (seconds * chips * peak_flops) if seconds > 0 else 0.0


def run_flops(chips: int, seconds: float, peak_flops: float, utilisation: float) -> float:
    """FLOPs performed by `chips` at `utilisation` of their peak for `seconds`."""
    return chips * seconds * peak_flops * utilisation


def energy_kwh(chips: int, seconds: float, watts: float, pue: float = 1.0) -> float:
    """Modelled energy: chips x watts x hours x PUE, in kWh."""
    return chips * watts * seconds / 3600.0 * pue / 1000.0


def carbon_tco2e(kwh: float, kg_per_kwh: float) -> float:
    """Tonnes of CO2-equivalent for `kwh` at a grid intensity in kgCO2e/kWh."""
    return kwh * kg_per_kwh / 1000.0


class EnergyMeter:
    """Energy since `start()`: NVML's total-energy counter summed over visible GPUs when present,
    else modelled from elapsed time x `watts` x `chips`. `measured` says which."""

    def __init__(self, watts: float, chips: int = 1):
        self.watts, self.chips = watts, chips
        self._handles = _nvml_handles()
        self.measured = bool(self._handles)
        self.start()

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._e0 = self._nvml_joules()

    def _nvml_joules(self) -> float:
        if not self._handles:
            return 0.0
        import pynvml
        return sum(pynvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._handles) / 1000.0

    def kwh(self) -> float:
        if self.measured:
            return (self._nvml_joules() - self._e0) / 3.6e6
        return energy_kwh(self.chips, time.perf_counter() - self._t0, self.watts)


def _nvml_handles() -> list:
    try:
        import pynvml
        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        for h in handles:  # raises where the counter is unsupported
            pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
        return handles
    except Exception:  # no NVML, no GPU, or no energy counter: model it
        return []


@dataclass(frozen=True)
class RunReport:
    flops: float
    mwh: float
    tco2e: float

    def table(self) -> str:
        return (f"{'compute':<10} {self.flops:.2E} FLOPs\n"  # three significant figures, as §10
                f"{'energy':<10} {self.mwh:.3g} MWh\n"
                f"{'carbon':<10} {self.tco2e:.3g} tCO2e")


def run_report(chips: int, seconds: float, peak_flops: float, utilisation: float, watts: float,
               pue: float, kg_per_kwh: float) -> RunReport:
    kwh = energy_kwh(chips, seconds, watts, pue)
    return RunReport(run_flops(chips, seconds, peak_flops, utilisation), kwh / 1000.0,
                     carbon_tco2e(kwh, kg_per_kwh))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="FLOPs, energy and carbon of a training run. Defaults: "
                                "LaMDA 137B pre-training (paper §10).")
    p.add_argument("--hardware", default="tpu-v3", help=f"one of {', '.join(HARDWARE)}")
    p.add_argument("--chips", type=int, default=1024)
    p.add_argument("--days", type=float, default=57.7, help="wall-clock days (or use --seconds)")
    p.add_argument("--seconds", type=float, help="wall-clock seconds (overrides --days)")
    p.add_argument("--peak-tflops", type=float, help="peak TFLOP/s per chip (default: hardware's)")
    p.add_argument("--utilisation", type=float, default=0.565, help="fraction of peak (MFU)")
    p.add_argument("--watts", type=float, help="mean system power per chip (default: hardware's)")
    p.add_argument("--pue", type=float, default=1.10, help="data-centre power usage effectiveness")
    p.add_argument("--grid", type=float, default=0.056, help="grid intensity, kgCO2e/kWh")
    a = p.parse_args(argv)
    hw = hardware(a.hardware)
    seconds = a.seconds if a.seconds is not None else a.days * SECONDS_PER_DAY
    peak = a.peak_tflops * 1e12 if a.peak_tflops else hw.peak_flops
    report = run_report(a.chips, seconds, peak, a.utilisation, a.watts or hw.watts, a.pue, a.grid)
    print(f"{a.chips} x {a.hardware}, {seconds / SECONDS_PER_DAY:.1f} days, "
          f"{a.utilisation:.1%} of {peak / 1e12:.0f} TFLOP/s, PUE {a.pue}, {a.grid} kgCO2e/kWh")
    print(report.table())


if __name__ == "__main__":
    main()
