"""How to split a layer between threads: the fused train step on one thread, over batch-row shards
and over hidden-unit shards (each forced by rnnkit.kernels.plan's thresholds, which this measures),
interleaved in one process. Prints each mode's time and its ratio to one thread: below 1, it pays.

    .venv/bin/python benchmarks/split.py                          # B16-64 T50 H32-256
    .venv/bin/python benchmarks/split.py --sizes 32x50x96 --cells lstm
"""

from __future__ import annotations

import argparse

import torch

from rnnkit.bench import _build, _time_interleaved, _train_jobs, parse_script_arguments, parse_sizes
from rnnkit.kernels import plan

# The thresholds that force each mode (per-step multiply-adds; 1 << 62 is never reached).
MODES = {
    "one": {"TEAM_ROWS_MIN_WORK": 1 << 62, "UNITS_MIN_WORK": 1 << 62, "UNITS_OVER_ROWS_WORK": 1 << 62},
    "rows": {"TEAM_ROWS_MIN_WORK": 0, "UNITS_MIN_WORK": 1 << 62, "UNITS_OVER_ROWS_WORK": 1 << 62},
    "units": {"TEAM_ROWS_MIN_WORK": 1 << 62, "UNITS_MIN_WORK": 0, "UNITS_OVER_ROWS_WORK": 0},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args = parse_script_arguments(parser, "16x50x32,32x50x32,32x50x64,64x50x64,32x50x128,64x200x128,32x50x256", 2)
    default = {name: getattr(plan, name) for name in MODES["one"]}
    for B, T, H in parse_sizes(args.sizes):
        for cell in args.cells.split(","):
            torch.manual_seed(0)
            x, y = torch.randn(B, T, 1), torch.randn(B, 1)
            first = _build(cell, "fused", H, None)
            models = {k: first if k == "one" else _build(cell, "fused", H, first) for k in MODES}
            jobs = _train_jobs(models, x, y)

            def step(k):
                for name, value in MODES[k].items():
                    setattr(plan, name, value)
                jobs[k]()

            times = _time_interleaved({k: (lambda k=k: step(k)) for k in models}, args.rounds, 0.03)
            med = {k: v * 1e3 for k, v in times.items()}
            work = B * H * H * {"rnn": 1, "gru": 3, "lstm": 4}[cell]
            print(f"{cell:4s} B{B} T{T} H{H}  {work / 1e6:.2f}M multiply-adds/step  one {med['one']:.3f} ms  "
                  f"rows/one {med['rows'] / med['one']:.2f}  units/one {med['units'] / med['one']:.2f}", flush=True)
    for name, value in default.items():
        setattr(plan, name, value)


if __name__ == "__main__":
    main()
