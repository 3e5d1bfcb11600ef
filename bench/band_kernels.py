"""The Triton band kernels alone, per launch setting of the dq kernel, at a training shape (CUDA).
One JSON line per setting: bias_grad_ms, the kernel without dq (the flex backend's bias gradient),
and bwd_ms, the band backend's whole band backward (dq kernel with dq, then dk/dv). Eager calls,
CUDA-event median of 20.

    python bench/band_kernels.py --dq "4.1.512;8.1.1024;4.1.2048"   # warps.stages.programs
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from lamda import attention_band  # noqa: E402


def cuda_ms(fn, reps: int = 20) -> float:
    fn()  # compile / warm up
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return round(statistics.median(times), 4)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="16,16,1024,128", help="B,H,T,D")
    p.add_argument("--window", type=int, default=128)
    p.add_argument("--dq", default="4.1.512;8.1.1024;4.1.2048",
                   help="dq kernel settings (warps.stages.programs) to try, separated by ;")
    a = p.parse_args(argv)
    B, H, T, D = (int(x) for x in a.shape.split(","))
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, dout = (torch.randn(B, H, T, D, device="cuda", generator=g).bfloat16()
                     for _ in range(4))
    near = torch.randn(H, a.window, device="cuda", generator=g)
    out, lse = attention_band.band_attention_fwd(q, k, v, near, 1.0)
    for setting in a.dq.split(";"):
        attention_band.configure(f"dq={setting},bias_grad={setting}")
        row = {"bench": "band_kernels", "device": torch.cuda.get_device_name(), "shape": [B, H, T, D],
               "dq": setting}
        try:
            row["bias_grad_ms"] = cuda_ms(lambda: attention_band.band_bias_grad(
                q, k, v, out, lse, dout, near, 1.0))
            row["bwd_ms"] = cuda_ms(lambda: attention_band.band_attention_bwd(
                q, k, v, out, lse, dout, near, 1.0, None, None, None))
        except Exception as e:  # e.g. out of shared memory: report and go on
            row["error"] = f"{type(e).__name__}: {e}"[:300]
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
