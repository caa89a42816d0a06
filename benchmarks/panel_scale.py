"""How a panel scales: N series of L points in the long format, one global model, timed end to end.

    .venv/bin/python benchmarks/panel_scale.py                          # 10,000 series x 100 points
    .venv/bin/python benchmarks/panel_scale.py --series 1000 --length 60 --horizon 6

The series are synthetic monthly ones (a level per series, a trend, a yearly season of its own
amplitude and phase, noise), so that the run needs nothing but rnnkit. Times are printed for
reading the table, fitting (both trainings: the test model and the refit on every point), the test
evaluation and the forecast of every series (with their 80% and 95% intervals), with the default
settings of a CSV (the csv preset).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch


def make_panel(series: int, length: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    level = rng.uniform(50, 500, (series, 1))
    trend = rng.normal(0, 0.004, (series, 1)) * level
    season = rng.uniform(0, 0.2, (series, 1)) * level * np.sin(2 * np.pi * (t / 12 + rng.uniform(0, 1, (series, 1))))
    noise = rng.normal(0, 0.03, (series, length)) * level
    y = np.maximum(level + trend * t + season + noise, 1.0)
    months = pd.period_range("2000-01", periods=length, freq="M").strftime("%Y-%m")
    return pd.DataFrame({"unique_id": np.repeat([f"s{i}" for i in range(series)], length),
                         "ds": np.tile(months, series), "y": y.ravel()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--length", type=int, default=100)
    parser.add_argument("--horizon", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import rnnkit

    t0 = time.perf_counter()
    df = make_panel(args.series, args.length)
    f = rnnkit.Forecaster(horizon=args.horizon)
    t1 = time.perf_counter()
    f.fit(df, target="y", time_col="ds", id_col="unique_id", log=None, progress=False)
    t2 = time.perf_counter()
    m = f.evaluate(baselines=True)
    t3 = time.perf_counter()
    fc = f.forecast()
    t4 = time.perf_counter()
    h = f.history
    print(f"{args.series} series x {args.length} points, horizon {args.horizon}, {args.threads} thread(s)")
    print(f"  data {t1 - t0:.1f} s, fit {t2 - t1:.1f} s ({len(h['epoch'])} + {len(h['refit']['epoch'])} epochs), "
          f"test {t3 - t2:.1f} s, forecast {t4 - t3:.1f} s ({len(fc)} rows); total {t4 - t0:.1f} s")
    b = m["baselines"]
    print(f"  test MASE: rnnkit {m['mase']:.3f}, naive {b['naive']['mase']:.3f}, seasonal naive "
          f"{b['seasonal_naive']['mase']:.3f}, linear AR {b['linear_ar']['mase']:.3f}")
    if "intervals" in m:
        print("  intervals (test part): " + ", ".join(f"{lv}%: coverage {v['coverage']:.1f}, MSIS {v['msis']:.2f}"
                                                     for lv, v in m["intervals"].items()))


if __name__ == "__main__":
    main()
