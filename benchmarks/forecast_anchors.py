"""rnnkit against statsforecast's AutoETS, AutoARIMA, AutoTheta and seasonal naive, on the same rolling
origins over public real series (issue #24 item 5; intervals: issue #25 item 1).

    make anchors                                      # installs the `anchors` extra, runs this
    .venv/bin/python benchmarks/forecast_anchors.py                       # 16 series + the panel
    .venv/bin/python benchmarks/forecast_anchors.py --only austa,taylor --no-panel
    .venv/bin/python benchmarks/forecast_anchors.py --settings '{"epochs": 30}' --out results.json
    .venv/bin/python benchmarks/forecast_anchors.py --no-rnnkit           # the anchors alone

Corpus (benchmarks/anchor_corpus.py): 16 single series, yearly to half-hourly and one in seconds, 36 to
4,032 points, each with its time column as a user's CSV would have it; and a panel of 181 M3 yearly
series (20-47 points) as one long DataFrame (unique_id, ds, y). All come from pip packages that ship
their data (the `anchors` extra); nothing is downloaded.

Protocol. Per series: horizon h and season m by frequency (anchor_corpus.FREQS: yearly 6/1, quarterly
8/4, monthly 18/12, weekly 13/52, daily 14/7, hourly 48/24, half-hourly 48/48, seconds 10/1), h at
most N/6. Four origins t = N - k*h, k = 4, 3, 2, 1: each forecasts y[t:t+h] from y[:t], so together
they cover the last 4h points without overlap. The panel's series are too short for that (20 points
would leave none): its four origins are t = N - h - 3, ..., N - h (one year apart; the last one is
the M3 competition's own test window), h = 6 for every series. Every method gets the same training
part, the last MAX_TRAIN = 2000 points before the origin at most (statsforecast's AutoARIMA ran past 15
minutes for one fit on taylor's 3,984 half-hours); only taylor and jfk_temp are that long.

rnnkit is called through its public API with default settings (plus --settings), as a user would:
    rnnkit.Forecaster(horizon=h, **settings).fit(train_df, target="y", time_col="ds", log=None).forecast()
and for the panel, one model for all series at each origin:
    rnnkit.Forecaster(horizon=6, **settings).fit(long_df, target="y", time_col="ds", id_col="unique_id",
                                               log=None).forecast()      # unique_id, ds, step, y
Any exception is that series' (origin's) failure, reported with its first line. Prediction intervals
are read where the forecast has them (y_lo80, y_hi80, y_lo95, y_hi95).

Anchors: statsforecast's models on the training values alone (their time column plays no part):
AutoETS, AutoARIMA, AutoTheta and SeasonalNaive with season_length=m, each with level=[80, 95].
AutoARIMA approximates the likelihood during its search where R's auto.arima does by default (more
than 150 points or m > 12; on 500 of taylor's points: 15 s a fit against 216 s without). They are deterministic, so their forecasts are cached in
benchmarks/anchors_cache.json, one entry per series, origin and method, keyed also by a digest of the
training values, h, m and statsforecast's version: a rerun computes only rnnkit, and a changed series
or version recomputes its own entries.

Metrics per origin, then averaged over the origins of a series, then over the series:
- MASE: MAE / the in-sample MAE of the seasonal naive (lag m) on the training part before that
  origin; lag 1 where that part has m points or fewer or its seasonal MAE is 0.
- sMAPE: 200/h * sum |y - f| / (|y| + |f|), in percent (a 0/0 term counts 0).
- coverage of the 80% and 95% intervals: the share of the h points inside them.
- MSIS (M4's): (1/h) sum [(U - L) + 2/a (L - y)[y < L] + 2/a (y - U)[y > U]] / the MASE scale,
  a = 0.05 for the 95% interval (msis80: a = 0.2).
- scaled pinball loss: the pinball loss of the interval bounds as the quantiles 0.025, 0.1, 0.9 and
  0.975, averaged over them and the h points, / the MASE scale.
"Beats seasonal naive": a series' mean MASE below SeasonalNaive's on it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import anchor_corpus as corpus  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(__file__).resolve().parent / "anchors_cache.json"
ORIGINS = 4
MAX_TRAIN = 2000
LEVELS = (80, 95)
METHODS = ("AutoETS", "AutoARIMA", "AutoTheta", "SeasonalNaive")
ALL = ("rnnkit",) + METHODS
SHORT = {"rnnkit": "rnnkit", "AutoETS": "AutoETS", "AutoARIMA": "AutoARIMA", "AutoTheta": "AutoTheta",
         "SeasonalNaive": "SNaive"}


# ---- protocol and metrics ---------------------------------------------------------------------------

def single_origins(n: int, h: int) -> list[int]:
    return [n - k * h for k in range(ORIGINS, 0, -1)]


def panel_origins(n: int, h: int) -> list[int]:
    return [n - h - k for k in range(ORIGINS - 1, -1, -1)]


def train_slice(t: int) -> slice:
    return slice(max(0, t - MAX_TRAIN), t)


def mase_scale(train: np.ndarray, m: int) -> float:
    """In-sample MAE of the seasonal naive (lag m), or of the naive (lag 1) where that cannot be used."""
    if m > 1 and len(train) > m:
        s = float(np.mean(np.abs(train[m:] - train[:-m])))
        if s > 0:
            return s
    s = float(np.mean(np.abs(np.diff(train)))) if len(train) > 1 else math.nan
    return s if s > 0 else math.nan


def score(train: np.ndarray, test: np.ndarray, fc: dict, m: int) -> dict:
    """The metrics of one forecast: fc holds 'mean' and, for intervals, 'lo-80', 'hi-80', ..."""
    s = mase_scale(train, m)
    f = np.asarray(fc["mean"], float)
    err = np.abs(test - f)
    denom = np.abs(test) + np.abs(f)
    out = {"mase": float(np.mean(err) / s),
           "smape": float(200 * np.mean(np.divide(err, denom, out=np.zeros_like(err), where=denom > 0)))}
    if all(f"{side}-{lvl}" in fc for lvl in LEVELS for side in ("lo", "hi")):
        pinball = []
        for lvl in LEVELS:
            a = 1 - lvl / 100
            lo, hi = np.asarray(fc[f"lo-{lvl}"], float), np.asarray(fc[f"hi-{lvl}"], float)
            out[f"cov{lvl}"] = float(np.mean((test >= lo) & (test <= hi)))
            out[f"msis{lvl}"] = float(np.mean((hi - lo) + 2 / a * (lo - test) * (test < lo)
                                              + 2 / a * (test - hi) * (test > hi)) / s)
            for q, b in ((a / 2, lo), (1 - a / 2, hi)):
                pinball.append(np.mean(np.maximum(q * (test - b), (q - 1) * (test - b))))
        out["pinball"] = float(np.mean(pinball) / s)
    return out


def mean_metrics(per_origin: list[dict]) -> dict:
    keys = set.intersection(*(set(d) for d in per_origin))
    return {k: float(np.mean([d[k] for d in per_origin])) for k in sorted(keys)}


def one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:300]


# ---- anchors (statsforecast), cached ----------------------------------------------------------------

def anchor_model(method: str, m: int, n: int):
    from statsforecast.models import AutoARIMA, AutoETS, AutoTheta, SeasonalNaive

    if method == "AutoARIMA":
        return AutoARIMA(season_length=m, approximation=n > 150 or m > 12)
    return {"AutoETS": AutoETS, "AutoTheta": AutoTheta, "SeasonalNaive": SeasonalNaive}[method](season_length=m)


class AnchorCache:
    """benchmarks/anchors_cache.json: {"series|origin|method": {"digest", "seconds", "fc" or "error"}}."""

    def __init__(self, path: Path, refresh: bool = False) -> None:
        import statsforecast

        self.path, self.version = path, statsforecast.__version__
        self.entries = {} if refresh or not path.exists() else json.loads(path.read_text())
        self.computed = 0

    def digest(self, y: np.ndarray, h: int, m: int, method: str) -> str:
        text = f"{method}|h={h}|m={m}|statsforecast {self.version}|{MAX_TRAIN}|".encode()
        return hashlib.sha256(text + np.ascontiguousarray(y, dtype=np.float64).tobytes()).hexdigest()[:16]

    def get(self, key: str, y: np.ndarray, h: int, m: int, method: str) -> dict:
        """The cached forecast (or error) of `method` on y, computed and stored when missing or stale."""
        d = self.digest(y, h, m, method)
        hit = self.entries.get(key)
        if hit is None or hit["digest"] != d:
            t0 = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    r = anchor_model(method, m, len(y)).forecast(y=y, h=h, level=list(LEVELS))
                hit = {"fc": {k: [float(f"{v:.8g}") for v in np.asarray(r[k], float)] for k in sorted(r)}}
            except Exception as e:  # an anchor that fails on a series is reported like rnnkit's failures
                hit = {"error": one_line(e)}
            hit = {"digest": d, "seconds": round(time.perf_counter() - t0, 3), **hit}
            self.entries[key] = hit
            self.computed += 1
        return hit

    def save(self) -> None:
        if not self.computed:
            return
        lines = [f"{json.dumps(k)}: {json.dumps(self.entries[k], separators=(',', ':'))}" for k in sorted(self.entries)]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("{\n" + ",\n".join(lines) + "\n}\n")
        os.replace(tmp, self.path)
        self.computed = 0


# ---- rnnkit, through its public API -----------------------------------------------------------------

def forecast_columns(fc: pd.DataFrame, h: int) -> dict:
    """The point forecast (and intervals, where given) of an rnnkit forecast frame, in step order."""
    fc = fc.sort_values("step")
    if len(fc) != h:
        raise ValueError(f"the forecast has {len(fc)} rows, expected h={h}")
    out = {"mean": fc["y"].to_numpy(float)}
    for lvl in LEVELS:
        if f"y_lo{lvl}" in fc and f"y_hi{lvl}" in fc:
            out[f"lo-{lvl}"], out[f"hi-{lvl}"] = fc[f"y_lo{lvl}"].to_numpy(float), fc[f"y_hi{lvl}"].to_numpy(float)
    return out


def rnnkit_fit(train: pd.DataFrame, h: int, settings: dict, threads: int, id_col: str | None = None) -> dict:
    """One rnnkit fit + forecast: {"fc": ... (per id for a panel), "seconds"} or {"error", "seconds"}."""
    import torch

    import rnnkit

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    try:
        kw = {"id_col": id_col} if id_col else {}
        f = rnnkit.Forecaster(horizon=h, **settings).fit(train, target="y", time_col="ds", log=None, **kw)
        fc = f.forecast()
        if id_col:
            got = {str(k): g for k, g in fc.groupby(id_col, sort=False)}
            res = {}
            for uid in train[id_col].unique():
                try:
                    res[str(uid)] = forecast_columns(got[str(uid)], h)
                except KeyError:
                    res[str(uid)] = {"error": f"no forecast for id {uid}"}
                except ValueError as e:
                    res[str(uid)] = {"error": one_line(e)}
            out = {"fc": res}
        else:
            out = {"fc": forecast_columns(fc, h)}
    except Exception as e:
        out = {"error": one_line(e)}
    out["seconds"] = time.perf_counter() - t0
    return out


def run_rnnkit(tasks: list[tuple], settings: dict, threads: int, jobs: int, id_col: str | None = None) -> list[dict]:
    """rnnkit_fit over (label, train, h) tasks, in this process or in `jobs` fresh ones; a line on stderr
    as each one ends."""
    def done(label: str, out: dict) -> dict:
        print(f"  rnnkit {label}: {out['seconds']:.1f} s{' ' + out['error'] if 'error' in out else ''}",
              file=sys.stderr, flush=True)
        return out

    if jobs <= 1:
        return [done(label, rnnkit_fit(train, h, settings, threads, id_col)) for label, train, h in tasks]
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(rnnkit_fit, train, h, settings, threads, id_col) for _, train, h in tasks]
        return [done(label, f.result()) for (label, _, _), f in zip(tasks, futures)]


# ---- the benchmark ----------------------------------------------------------------------------------

def evaluate_singles(series: list, cache: AnchorCache, args, settings: dict) -> dict:
    """{name: {"freq", "N", "h", "m", "source", "origins", "methods": {method: {...}}}}."""
    results = {}
    tasks = []
    for s in series:
        y = s.df["y"].to_numpy(float)
        origins = single_origins(len(y), s.h)
        methods = {}
        for method in METHODS:
            per, err = [], None
            for t in origins:
                train = y[train_slice(t)]
                hit = cache.get(f"{s.name}|{t}|{method}", train, s.h, s.m, method)
                if "error" in hit:
                    err = err or f"origin {t}: {hit['error']}"
                else:
                    per.append(score(train, y[t:t + s.h], hit["fc"], s.m))
            methods[method] = {"per_origin": per, "error": err}
        cache.save()
        results[s.name] = {"freq": s.freq, "N": len(y), "h": s.h, "m": s.m, "source": s.source,
                           "origins": origins, "methods": methods}
        tasks += [(s, t) for t in origins]
    if not args.no_rnnkit:
        t0 = time.perf_counter()
        outs = run_rnnkit([(f"{s.name} origin {t}", s.df.iloc[train_slice(t)].reset_index(drop=True), s.h)
                           for s, t in tasks], settings, args.threads, args.jobs)
        for name in results:
            results[name]["methods"]["rnnkit"] = {"per_origin": [], "error": None, "seconds": []}
        for (s, t), out in zip(tasks, outs):
            r = results[s.name]["methods"]["rnnkit"]
            r["seconds"].append(round(out["seconds"], 3))
            if "error" in out:
                r["error"] = r["error"] or f"origin {t}: {out['error']}"
            else:
                y = s.df["y"].to_numpy(float)
                r["per_origin"].append(score(y[train_slice(t)], y[t:t + s.h], out["fc"], s.m))
        print(f"rnnkit: {len(tasks)} fits of single series in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    for r in results.values():
        for res in r["methods"].values():
            res["mean"] = mean_metrics(res["per_origin"]) if res["per_origin"] and not res["error"] else None
    return results


def evaluate_panel(cache: AnchorCache, args, settings: dict) -> dict:
    """{"ids": {id: {"N", "origins", "methods": {...}}}, "rnnkit_seconds": [...], "source"}."""
    long = corpus.panel()
    h, m = corpus.PANEL_H, 1
    groups = {str(k): g["y"].to_numpy(float) for k, g in long.groupby("unique_id", sort=True)}
    ids = {}
    for i, (uid, y) in enumerate(groups.items()):
        origins = panel_origins(len(y), h)
        methods = {}
        for method in METHODS:
            per, err = [], None
            for t in origins:
                hit = cache.get(f"M3/{uid}|{t}|{method}", y[train_slice(t)], h, m, method)
                if "error" in hit:
                    err = err or f"origin {t}: {hit['error']}"
                else:
                    per.append(score(y[train_slice(t)], y[t:t + h], hit["fc"], m))
            methods[method] = {"per_origin": per, "error": err}
        ids[uid] = {"N": len(y), "origins": origins, "methods": methods}
        if i % 20 == 19:
            cache.save()
    cache.save()
    seconds = []
    if not args.no_rnnkit:
        tasks = []
        for k in range(ORIGINS):  # the k-th origin of every series, in one long frame
            parts = [g.iloc[:ids[uid]["origins"][k]] for uid, g in long.groupby("unique_id", sort=True)]
            tasks.append((f"panel origin {k + 1}", pd.concat(parts, ignore_index=True), h))
        outs = run_rnnkit(tasks, settings, args.threads, 1, id_col="unique_id")
        for uid in ids:
            ids[uid]["methods"]["rnnkit"] = {"per_origin": [], "error": None}
        for k, out in enumerate(outs):
            seconds.append(round(out["seconds"], 3))
            for uid, y in groups.items():
                r = ids[uid]["methods"]["rnnkit"]
                t = ids[uid]["origins"][k]
                fc = out.get("fc", {}).get(uid, {"error": out.get("error")})
                if "error" in fc:
                    r["error"] = r["error"] or f"origin {t}: {fc['error']}"
                else:
                    r["per_origin"].append(score(y[train_slice(t)], y[t:t + h], fc, m))
    for r in ids.values():
        for res in r["methods"].values():
            res["mean"] = mean_metrics(res["per_origin"]) if res["per_origin"] and not res["error"] else None
    return {"source": corpus.PANEL_SOURCE, "h": h, "m": m, "ids": ids, "rnnkit_seconds": seconds}


# ---- the report -------------------------------------------------------------------------------------

def summary(rows: dict, methods: tuple) -> dict:
    """Per method over the series: the means of each metric (over the series it ran on), its failures,
    and its wins over seasonal naive."""
    out = {}
    for method in methods:
        ran = {n: r["methods"][method]["mean"] for n, r in rows.items()
               if method in r["methods"] and r["methods"][method]["mean"] is not None}
        if not any(method in r["methods"] for r in rows.values()):
            continue
        keys = set.intersection(*(set(v) for v in ran.values())) if ran else set()
        snaive = {n: r["methods"]["SeasonalNaive"]["mean"] for n, r in rows.items()}
        wins = sum(1 for n, v in ran.items() if snaive[n] and v["mase"] < snaive[n]["mase"])
        out[method] = {"series": len(ran), "failed": len(rows) - len(ran), "beats_snaive": wins,
                       **{k: float(np.mean([v[k] for v in ran.values()])) for k in sorted(keys)}}
    return out


def fmt(x, spec: str = ".3f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def print_row(label: str, cells: list[str]) -> None:
    print(f"{label:34s}" + " ".join(f"{c:>9s}" for c in cells))


def print_summary(rows: dict, methods: tuple) -> dict:
    """The rows under a table: mean MASE and sMAPE ("n/a" for a method that failed on some series; then
    the means over the series rnnkit ran on), wins over seasonal naive, failures. Returns the summary."""
    summ = summary(rows, methods)
    methods = [k for k in methods if k in summ]

    def means(key: str, spec: str) -> list[str]:
        return [fmt(summ[k].get(key), spec) if not summ[k]["failed"] else "n/a" for k in methods]

    print_row("mean MASE", means("mase", ".3f"))
    if "rnnkit" in summ and summ["rnnkit"]["failed"] and summ["rnnkit"]["series"]:
        ran = {n: r for n, r in rows.items() if r["methods"]["rnnkit"]["mean"]}
        summ["where_rnnkit_ran"] = sub = summary(ran, methods)
        print_row(f"mean MASE, the {len(ran)} rnnkit ran", [fmt(sub[k].get("mase")) for k in methods])
    print_row("mean sMAPE %", means("smape", ".2f"))
    print_row(f"beats seasonal naive (of {len(rows)})", [str(summ[k]["beats_snaive"]) for k in methods])
    print_row("failed series", [str(summ[k]["failed"]) for k in methods])
    return summ


def print_report(singles: dict, panel: dict | None, settings: dict) -> dict:
    report = {}
    methods = ALL if any("rnnkit" in r["methods"] for r in singles.values()) else METHODS
    timed = "rnnkit" in methods
    if singles:
        print("\nMASE per series (mean over 4 origins)" + ("; s/fit: rnnkit's mean fit + forecast" if timed else ""))
        print(f"{'series':12s} {'freq':11s} {'N':>5s} {'h':>3s} {'m':>3s} "
              + " ".join(f"{SHORT[k]:>9s}" for k in methods) + ("   s/fit" if timed else ""))
        for name, r in singles.items():
            cells = [fmt(r["methods"][k]["mean"]["mase"]) if r["methods"][k]["mean"] else "fail" for k in methods]
            print(f"{name:12s} {r['freq']:11s} {r['N']:5d} {r['h']:3d} {r['m']:3d} "
                  + " ".join(f"{c:>9s}" for c in cells)
                  + (f" {np.mean(r['methods']['rnnkit']['seconds']):7.1f}" if timed else ""))
        report["singles"] = summ = print_summary(singles, methods)
        print_intervals("single series", summ, methods)
    if panel:
        ids = panel["ids"]
        print(f"\nPanel: {len(ids)} M3 yearly series, h={panel['h']}, 4 origins one year apart "
              "(mean over origins, then series)")
        print_row("", [SHORT[k] for k in methods])
        report["panel"] = summ = print_summary(ids, methods)
        if panel["rnnkit_seconds"]:
            print("rnnkit panel: one model per origin, "
                  f"{', '.join(f'{s:.1f}' for s in panel['rnnkit_seconds'])} s per fit + forecast")
        print_intervals("panel", summ, methods)
    print_failures(singles, panel)
    print(f"\nrnnkit settings: Forecaster(horizon=h, **{json.dumps(settings)})")
    return report


def print_intervals(what: str, summ: dict, methods: tuple) -> None:
    with_iv = [k for k in methods if k in summ and "cov80" in summ[k]]
    if not with_iv:
        return
    print(f"\nIntervals, {what} (means over the series each method ran on; rnnkit where its forecast has "
          "y_lo80, y_hi80, y_lo95, y_hi95)")
    print(f"{'method':14s} {'cover 80%':>9s} {'cover 95%':>9s} {'MSIS 95':>8s} {'MSIS 80':>8s} {'pinball':>8s}")
    for k in with_iv:
        s = summ[k]
        print(f"{SHORT[k]:14s} {fmt(100 * s['cov80'], '.1f'):>9s} {fmt(100 * s['cov95'], '.1f'):>9s} "
              f"{fmt(s['msis95'], '.2f'):>8s} {fmt(s['msis80'], '.2f'):>8s} {fmt(s['pinball'], '.3f'):>8s}")


def print_failures(singles: dict | None, panel: dict | None) -> None:
    lines = []
    for name, r in (singles or {}).items():
        for k, res in r["methods"].items():
            if res["error"]:
                lines.append(f"  {k} on {name}: {res['error']}")
    if panel:
        errs = {}
        for uid, r in panel["ids"].items():
            for k, res in r["methods"].items():
                if res["error"]:
                    errs.setdefault((k, res["error"].split(": ", 1)[-1]), []).append(uid)
        for (k, msg), uids in errs.items():
            some = ", ".join(uids[:3]) + (", ..." if len(uids) > 3 else "")
            lines.append(f"  {k} on {len(uids)} panel series ({some}): {msg}")
    if lines:
        print("\nFailures (first origin that failed):")
        print("\n".join(lines))


def rnnkit_source() -> str:
    """Which rnnkit this process imports: its directory and, in a git checkout, the commit and whether
    its src/ has uncommitted changes (taken at the start: other work may commit while this runs)."""
    import rnnkit

    src = Path(rnnkit.__file__).resolve().parent
    try:
        git = ["git", "-C", str(src)]
        rev = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(git + ["status", "--porcelain", "--", str(src.parent)], capture_output=True,
                               text=True).stdout.strip()
        return f"{src} at {rev}" + (" + uncommitted src/ changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return f"{src} (not a git checkout)"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="", help=f"comma-separated series ({', '.join(corpus.NAMES)}); default all")
    p.add_argument("--panel", action=argparse.BooleanOptionalAction, default=None,
                   help="run the panel of 181 M3 yearly series (default: yes, unless --only is given)")
    p.add_argument("--settings", default="{}", help='JSON of Forecaster settings, e.g. \'{"epochs": 30}\'')
    p.add_argument("--no-rnnkit", action="store_true", help="the anchors alone (fills the cache)")
    p.add_argument("--refresh-anchors", action="store_true", help="recompute every anchor, ignoring the cache")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rnnkit fit (default 1, as the CLI's)")
    p.add_argument("--jobs", type=int, default=1, help="rnnkit fits of the single series in N processes (default 1)")
    p.add_argument("--out", type=Path, help="write every number (per series, origin and method) to this JSON file")
    args = p.parse_args()
    try:
        settings = json.loads(args.settings)
        if not isinstance(settings, dict) or "horizon" in settings:
            raise ValueError("an object of Forecaster settings, without horizon (the benchmark sets it)")
    except ValueError as e:
        p.error(f"--settings: {e}")
    only = [s for s in args.only.split(",") if s]
    run_panel = args.panel if args.panel is not None else not only

    t0, source = time.perf_counter(), rnnkit_source()
    cache = AnchorCache(CACHE, args.refresh_anchors)
    singles = evaluate_singles(corpus.singles(only), cache, args, settings)
    panel = evaluate_panel(cache, args, settings) if run_panel else None
    report = print_report(singles, panel, settings)
    wall = time.perf_counter() - t0
    print(f"rnnkit from {source}; statsforecast {cache.version}; {wall:.0f} s in all")
    if args.out:
        args.out.write_text(json.dumps({"rnnkit": source, "settings": settings, "seconds": round(wall, 1),
                                        "summary": report, "singles": singles, "panel": panel}, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
