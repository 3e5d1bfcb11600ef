"""The Triton band kernels alone, per launch setting, at a training shape (CUDA). One JSON line
per setting: for --bias-grad, the flex backend's bias gradient (kernel "rows", the dq kernel
without dq, or "tiles", a program per key tile); for --dq, the band backend's band backward (dq
kernel, then dk/dv). Settings are warps.stages.programs. Eager calls, CUDA-event median of 20.

    python bench/band_kernels.py --bias-grad "rows:8.1.1024;tiles:4.2.1024" --dq "4.1.512"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.timing import median_ms  # noqa: E402
from lamda.attention import band as attention_band  # noqa: E402
from lamda.attention.bias_grad import band_bias_grad  # noqa: E402
from lamda.config import BIAS_GRAD_LAUNCH, AttentionKernels  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="16,16,1024,128", help="B,H,T,D")
    p.add_argument("--window", type=int, default=128)
    p.add_argument("--device", default="cuda", help="cpu: Triton's interpreter (a check, not a "
                   "measurement; set TRITON_INTERPRET=1)")
    p.add_argument("--bias-grad", default="rows:4.1.512;rows:8.1.1024;tiles:4.2.1024;"
                   "tiles:4.3.1024;tiles:8.2.1024;tiles:4.2.4096", help="kernel:setting;...")
    p.add_argument("--dq", default="4.1.512;8.1.1024", help="setting;...")
    a = p.parse_args(argv)
    B, H, T, D = (int(x) for x in a.shape.split(","))
    g = torch.Generator(device=a.device).manual_seed(0)
    dtype = torch.bfloat16 if a.device == "cuda" else torch.float32
    q, k, v, dout = (torch.randn(B, H, T, D, device=a.device, generator=g).to(dtype)
                     for _ in range(4))
    near = torch.randn(H, a.window, device=a.device, generator=g)
    band = attention_band.BandSettings.of(AttentionKernels())
    out, lse = attention_band.band_attention_fwd(q, k, v, near, 1.0, [*band.fwd])

    def bias_grad(spec: str):  # "kernel:warps.stages.programs" (no kernel: rows), checked
        kernel, _, setting = spec.rpartition(":")
        kernel = kernel or "rows"
        launch = [*AttentionKernels(bias_grad=kernel, launch=f"{BIAS_GRAD_LAUNCH.get(kernel)}="
                                    f"{setting}").bias_grad_launch()]
        return lambda: band_bias_grad(q, k, v, out, lse, dout, near, 1.0, kernel, launch)

    def dq(spec: str):  # "warps.stages.programs", checked
        launch = [*AttentionKernels(launch=f"dq={spec}").launch_settings()["dq"]]
        return lambda: attention_band.band_attention_bwd(
            q, k, v, out, lse, dout, near, 1.0, None, None, None, launch, [*band.dkdv])

    specs = lambda arg: filter(None, arg.split(";"))  # noqa: E731
    runs = [("bias_grad", spec, bias_grad(spec)) for spec in specs(a.bias_grad)]
    runs += [("dq", spec, dq(spec)) for spec in specs(a.dq)]
    for what, spec, fn in runs:
        name = torch.cuda.get_device_name() if a.device == "cuda" else "cpu (interpreter)"
        row = {"bench": "band_kernels", "device": name,
               "shape": [B, H, T, D], what: spec}
        try:
            row["ms"] = median_ms(fn, a.device, reps=20 if a.device == "cuda" else 1)
        except Exception as e:  # e.g. out of shared memory: report and go on
            row["error"] = f"{type(e).__name__}: {e}"[:300]
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
