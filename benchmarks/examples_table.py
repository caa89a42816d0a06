"""The README's results table: the default model vs the baselines on examples/airline_passengers.csv.

    python benchmarks/examples_table.py                 # horizons 1 and 12, seed 0
    python benchmarks/examples_table.py --seeds 0 1 2   # model rows per seed

For each horizon it runs, as a user would, `rnnkit train --data examples/airline_passengers.csv
--target passengers --time-col month --horizon H --out DIR` (all other settings default) and
`rnnkit test --run DIR`, then prints a markdown table of the test metrics (last 24 months, never seen
in training or scaling) from DIR/metrics.json: MSE, MAE, sMAPE and MASE (season 12).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CSV = ROOT / "examples" / "airline_passengers.csv"
NAMES = {"naive": "naive (last value)", "seasonal_naive": "seasonal naive (m=12)", "linear_ar": "linear AR (ridge)"}


def rnnkit(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "rnnkit", *args], check=True, stdout=subprocess.DEVNULL)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--horizons", type=int, nargs="+", default=[1, 12])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="rnnkit-examples-"))
    print("| horizon | forecaster | MSE | MAE | sMAPE % | MASE |")
    print("|---:|---|---:|---:|---:|---:|")
    for H in args.horizons:
        for i, seed in enumerate(args.seeds):
            run = root / f"h{H}-s{seed}"
            rnnkit("train", "--data", str(CSV), "--target", "passengers", "--time-col", "month",
                   "--horizon", str(H), "--seed", str(seed), "--quiet", "--out", str(run))
            rnnkit("test", "--run", str(run))
            m = json.loads((run / "metrics.json").read_text())
            rows = {f"rnnkit default (GRU + linear skip, seed {seed})": m}
            if i == len(args.seeds) - 1:
                rows.update({NAMES[k]: v for k, v in m["baselines"].items()})
            for name, r in rows.items():
                print(f"| {H} | {name} | {r['mse']:.1f} | {r['mae']:.2f} | {r['smape']:.2f} | {r['mase']:.3f} |")
    print(f"\n{m['windows']} test windows for the last horizon; runs in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
