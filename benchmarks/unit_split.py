"""When to split a layer's hidden units between threads: the fused train step with the unit split
forced on against one thread, interleaved in one process (rnnkit.kernels.blas.UNITS_MIN_WORK is the
threshold this measures). Prints units/one per size and cell: below 1, the split pays.

    .venv/bin/python benchmarks/unit_split.py                       # B32 T50 H32..128, B64 T50 H128
    .venv/bin/python benchmarks/unit_split.py --sizes 32x50x96 --cells lstm
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rnnkit.bench import _build, _train_step, parse_sizes
from rnnkit.kernels import blas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="32x50x32,32x50x64,32x50x128,64x50x128")
    parser.add_argument("--cells", default="rnn,gru,lstm")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for B, T, H in parse_sizes(args.sizes):
        for cell in args.cells.split(","):
            torch.manual_seed(0)
            x, y = torch.randn(B, T, 1), torch.randn(B, 1)
            first = _build(cell, "fused", H, None)
            models = {"units": first, "one": _build(cell, "fused", H, first)}
            opts = {k: torch.optim.Adam(m.parameters(), lr=1e-3, fused=True) for k, m in models.items()}

            def step(k):
                blas.UNITS_MIN_WORK = 0 if k == "units" else 1 << 62
                _train_step(models[k], opts[k], x, y)

            for k in models:  # warm-up: compiled loops, Adam state
                step(k)
            start = time.perf_counter()
            step("one")
            n = max(1, int(0.03 / (time.perf_counter() - start)))
            times = {k: [] for k in models}
            for _ in range(args.rounds):
                for k in models:
                    start = time.perf_counter()
                    for _ in range(n):
                        step(k)
                    times[k].append((time.perf_counter() - start) / n * 1e3)
            med = {k: statistics.median(v) for k, v in times.items()}
            work = B * H * H * {"rnn": 1, "gru": 3, "lstm": 4}[cell]
            print(f"{cell:4s} B{B} T{T} H{H}  {work / 1e6:.2f}M multiply-adds/step  units {med['units']:.3f} ms  "
                  f"one {med['one']:.3f} ms  units/one {med['units'] / med['one']:.2f}", flush=True)


if __name__ == "__main__":
    main()
