"""The seed's job, timed and scored: `rnnkit train` + `rnnkit test` (+ `visualize`) as subprocesses,
for the defaults and for `--preset seed`, the way `make run` runs them.

    python benchmarks/seed_job.py                 # defaults vs --preset seed, 1 seed each
    python benchmarks/seed_job.py --seeds 0 1 2   # spread over training seeds
    taskset -c 0,1 python benchmarks/seed_job.py  # on 2 cores, as the README's numbers

Prints one row per (setup, seed): test MSE (original units), training seconds (the loop's own time),
and the wall seconds of train + test + visualize, each a fresh process as in `make run`.
Targets (issue #3): default test MSE <= 0.002; make-run wall < 15 s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETUPS = {"default": [], "seed-preset": ["--preset", "seed"]}


def rnnkit(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "rnnkit", *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    p.add_argument("--keep", metavar="DIR", help="keep the run directories under DIR")
    args = p.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="rnnkit-bench-"))
    print(f"python {sys.version.split()[0]}, cores available: {len(os.sched_getaffinity(0))}")
    print(f"{'setup':<12} {'seed':>4} {'test MSE':>10} {'epochs':>6} {'train s':>8} {'train+test+vis wall s':>22}")
    rows = []
    for setup in args.setups:
        for seed in args.seeds:
            run = root / f"{setup}-{seed}"
            wall = rnnkit("train", *SETUPS[setup], "--seed", str(seed), "--out", str(run), "--quiet")
            wall += rnnkit("test", "--run", str(run))
            wall += rnnkit("visualize", "--run", str(run))
            mse = json.loads((run / "metrics.json").read_text())["mse"]
            hist = json.loads((run / "history.json").read_text())
            rows.append((setup, seed, mse, len(hist["epoch"]), sum(hist["time"]), wall))
            print(f"{setup:<12} {seed:>4} {mse:>10.6f} {rows[-1][3]:>6} {rows[-1][4]:>8.1f} {wall:>22.1f}", flush=True)
    if not args.keep:
        shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
