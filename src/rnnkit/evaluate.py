"""Metrics, baselines and backtests of a forecast, in the data's original units.

Metrics over forecasts y (N windows, H steps, T targets), error e = prediction - truth:

    MSE = mean(e^2)   RMSE = sqrt(MSE)   MAE = mean(|e|)
    sMAPE = 100 * mean(2 |e| / (|truth| + |prediction|))          (a term with 0/0 counts 0)
    MASE = mean over targets of MAE_target / scale_target, scale = mean |v_t - v_{t-m}| over the
           training part (the in-sample seasonal-naive error, season m; m = 1: the naive error; the
           naive error where the training part is not longer than a season or repeats itself
           every season); for a panel, the mean of the series' MASE

Baselines, on the same test windows: naive (the window's last value, every step), seasonal naive (the
value one season before each step, within the known past; the last value where the series is not a
season long before the window) and a linear autoregression (ridge least squares from the window's
scaled inputs to its H x T targets, fit on the whole training windows of every series, the ridge
penalty picked on the validation windows).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from .errors import ConfigError, DataError
from .intervals import Calibration, calibrate, interval_scores, level_name, parse_levels

BASELINES = ("naive", "seasonal_naive", "linear_ar")
RIDGE_ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def metrics(y_true: np.ndarray, y_pred: np.ndarray, scale: np.ndarray | None = None) -> dict[str, float]:
    """MSE, MAE, RMSE and sMAPE over every element of two same-shaped arrays (N, horizon, targets),
    and MASE when ``scale`` (targets,) is given."""
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    err = p - t
    mse = float(np.mean(err ** 2))
    out = {"mse": mse, "mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(mse))}
    denom = np.abs(t) + np.abs(p)
    out["smape"] = float(100 * np.mean(np.where(denom > 0, 2 * np.abs(err) / np.where(denom > 0, denom, 1), 0.0)))
    if scale is not None:
        mae_per_target = np.abs(err).reshape(-1, t.shape[-1]).mean(axis=0)  # (T,)
        out["mase"] = float(np.mean(mae_per_target / np.asarray(scale, dtype=np.float64)))
    return out


def mase_scale(train_values: np.ndarray, season: int) -> np.ndarray:
    """MASE's denominator per column of the training part (N, T): mean |v_t - v_{t-m}|, or the naive
    error mean |v_t - v_{t-1}| where the part is not longer than m or its seasonal error is 0; NaN
    where both are 0 (a constant part: MASE is undefined)."""
    if season < 1:
        raise ConfigError(f"--season must be >= 1, got {season}")
    if len(train_values) < 2:
        raise DataError(f"the training part has {len(train_values)} point, too few to scale MASE")
    naive_err = np.abs(np.diff(train_values, axis=0)).mean(axis=0)
    if len(train_values) <= season:
        scale = naive_err
    else:
        scale = np.abs(train_values[season:] - train_values[:-season]).mean(axis=0)
        scale = np.where(scale > 0, scale, naive_err)
    return np.where(scale > 0, scale, np.nan)


def naive(values: np.ndarray, starts: np.ndarray, horizon: int) -> np.ndarray:
    """The last known value for every step: values (N, T), starts (W,) = each window's first target
    index -> (W, horizon, T)."""
    return np.repeat(values[starts - 1][:, None, :], horizon, axis=1)


def seasonal_naive(values: np.ndarray, starts: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """Step h (0-based) of the window starting at s is v[s + h - m * (h // m + 1)]: the same phase one
    season before, never at or after s; the last value v[s - 1] where that is before the series'
    start. -> (W, horizon, T)."""
    h = np.arange(horizon)
    idx = starts[:, None] + h - season * (h // season + 1)  # (W, H)
    idx = np.where(idx < 0, (starts - 1)[:, None], idx)
    return values[idx]


def ridge_path(x: np.ndarray, y: np.ndarray, alphas: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Ridge least squares of one output y (n,) on x (n, p) with an unpenalised intercept, for each
    penalty a in ``alphas`` (the penalty is a * n * |w|^2): weights (A, p + 1), the intercept last,
    and each fit's generalised cross-validation error (A,), from one SVD of the centred x."""
    n = len(x)
    xm, ym = x.mean(axis=0), y.mean()
    u, sv, vt = np.linalg.svd(x - xm, full_matrices=False)
    uy = u.T @ (y - ym)
    out, gcv = [], []
    for a in alphas:
        shrink = sv ** 2 / (sv ** 2 + a * n)
        w = vt.T @ (np.divide(shrink, sv, out=np.zeros_like(sv), where=sv > 0) * uy)
        out.append(np.append(w, ym - xm @ w))
        resid = (y - ym) - u @ (shrink * uy)
        dof = 1 + shrink.sum()  # the intercept, then the shrunk directions
        gcv.append(np.mean(resid ** 2) / max(1 - dof / n, 1e-9) ** 2)
    return np.array(out), np.array(gcv)


def ridge_fit(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """Weights (features + 1, outputs) of ridge least squares with an unpenalised intercept (the last row)."""
    return np.stack([ridge_path(x, y[:, o], [alpha])[0][0] for o in range(y.shape[1])], axis=1)


def ridge_predict(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    return x @ w[:-1] + w[-1]


def ridge_ar(train: Any, val: Any, residual: bool = False) -> tuple[np.ndarray, float]:
    """Ridge autoregression on flattened windows: train/val are datasets of scaled windows (x (N, S, F),
    y (N, H, T)[, mask]); each output is fit on the windows where its target is known. The penalty
    (one of RIDGE_ALPHAS) with the lowest validation MSE, or without validation windows the lowest
    generalised cross-validation error. residual=True fits y minus the window's last target values
    (the recurrent head's residual form).
    -> (weights (S*F + 1, H*T), the last row the intercept; alpha)."""
    def xy(ds):
        x, y, *mask = (t.double().numpy() for t in ds.tensors)
        if residual:
            y = y - x[:, -1:, :y.shape[2]]
        known = mask[0] > 0 if mask else np.ones(y.shape, dtype=bool)
        return x.reshape(len(x), -1), y.reshape(len(y), -1), known.reshape(len(y), -1)

    xt, yt, kt = xy(train)
    if len(xt) == 0:
        raise DataError("there are no training windows to fit the linear AR on")
    p = xt.shape[1]
    paths, scores = [], np.zeros(len(RIDGE_ALPHAS))
    for o in range(yt.shape[1]):
        rows = kt[:, o]
        if rows.sum() < 2:  # too few known targets for a fit: the zero forecast (the last value)
            paths.append(np.zeros((len(RIDGE_ALPHAS), p + 1)))
            continue
        w, gcv = ridge_path(xt[rows], yt[rows, o], RIDGE_ALPHAS)
        paths.append(w)
        scores += gcv
    if len(val):
        xv, yv, kv = xy(val)
        scores = np.array([np.mean([np.mean((ridge_predict(path[a], xv[kv[:, o]]) - yv[kv[:, o], o]) ** 2)
                                    for o, path in enumerate(paths) if kv[:, o].any()])
                           for a in range(len(RIDGE_ALPHAS))])
    best = int(np.argmin(scores))
    return np.stack([path[best] for path in paths], axis=1), RIDGE_ALPHAS[best]


def _mean_over_series(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if np.isfinite(r[key])]
    return float(np.mean(values)) if values else float("nan")


class PartForecasts(NamedTuple):
    """The forecasts of one part's windows (original units): true (W, H, T) with NaN where the truth is
    unknown (a masked or absent target), places (W, 2) each window's series and first target position,
    preds {name: (W, H, T)} the model's and the baselines'."""

    true: np.ndarray
    places: np.ndarray
    preds: dict


def part_forecasts(forecaster: Any, windows: Any, splits: Sequence, part: str, season: int,
                   baselines: bool, ar_weights: np.ndarray | None = None) -> PartForecasts:
    """The test model's forecasts of a part ("train", "val", "test") of ``windows`` (the splits'
    windows, scaled with the test model's scalers) and, with ``baselines``, naive's, seasonal naive's
    and, given its weights, the linear AR's on the same windows."""
    from .data import window_places

    f = forecaster
    T = f.panel.n_targets
    H = splits[0].horizon
    _, pred = f.window_predictions(windows, part)
    places = window_places(splits, part)  # (W, 2): series, first target position
    values = [s.values[:, :T] for s in f.panel.series]
    steps = np.arange(H)
    ds = getattr(windows, part)
    true = np.full(pred.shape, np.nan)
    preds = {"model": pred}
    if baselines:
        preds.update(naive=np.empty_like(pred), seasonal_naive=np.empty_like(pred))
        if ar_weights is not None:
            x = ds.tensors[0].double().numpy()
            ar = ridge_predict(ar_weights, x.reshape(len(x), -1)).reshape(len(x), H, T)
            preds["linear_ar"] = np.empty_like(ar)
    for i in np.unique(places[:, 0]):  # each series' windows at once
        rows = np.flatnonzero(places[:, 0] == i)
        first, v = places[rows, 1], values[i]
        at = first[:, None] + steps  # (W_i, H): each target's grid position
        true[rows] = np.where((at < len(v))[..., None], v[np.minimum(at, len(v) - 1)], np.nan)
        if baselines:
            preds["naive"][rows] = naive(v, first, H)
            preds["seasonal_naive"][rows] = seasonal_naive(v, first, H, season)
            if ar_weights is not None:
                preds["linear_ar"][rows] = windows.scalers[i].inverse(ar[rows], list(range(T)), at)
    if len(ds.tensors) > 2:  # short windows: their masked targets are not known
        true[ds.tensors[2].double().numpy() == 0] = np.nan
    return PartForecasts(true, places, preds)


def series_scales(forecaster: Any, splits: Sequence, season: int) -> np.ndarray:
    """Each series' MASE scale per target (series, T), from its training part; NaN where the part is
    constant or too short to have one."""
    T = forecaster.panel.n_targets
    out = np.full((len(splits), T), np.nan)
    for i, (s, sp) in enumerate(zip(forecaster.panel.series, splits)):
        if sp.fit_end >= 2:
            out[i] = mase_scale(s.values[:sp.fit_end, :T], season)
    return out


def calibrate_part(part: PartForecasts, scales: np.ndarray, name: str, levels: Sequence) -> Calibration:
    """The intervals of ``levels`` for forecaster ``name`` from its errors on a part's windows, in
    units of each series' MASE scale (so that series pool)."""
    errors = (part.true - part.preds[name]) / scales[part.places[:, 0]][:, None, :]
    return calibrate(errors, np.isfinite(errors), levels)


def report(forecaster: Any, splits: Any, season: int | None = None, baselines: bool = True,
           levels: Sequence | None = None) -> dict:
    """The test model's test metrics (top level) and, on the same test windows, the baselines' — for
    a fitted :class:`~rnnkit.Forecaster` and the splits of its series (each series' test part is
    evaluated; its training part sets MASE's scale and fits the linear AR). MSE, RMSE, MAE and
    sMAPE pool every forecast; MASE is each series' MASE, averaged. The model's and each baseline's
    metrics also hold each target's under "targets" (by name). A panel's report also lists each
    series' metrics under "series" (with its "id").

    ``levels`` (default: the run's): prediction intervals, each forecaster's calibrated on its errors
    on the validation windows (the training windows where there are none: "calibrated_on" says
    which), scored on the test windows under "intervals": {level: coverage %, MSIS, pinball}."""
    from .data import Split

    f = forecaster
    splits = [splits] if isinstance(splits, Split) else list(splits)
    m = season or f.config.data.season or 1
    levels = parse_levels(f.config.data.levels if levels is None else levels)
    T = f.panel.n_targets
    H = splits[0].horizon
    w = f._windows(splits, f.test_scalers)
    if len(w.test) == 0:
        raise DataError(f"the series are too short to hold out a test part (a series needs more than "
                        f"{H} points beyond the first 3); forecast with `rnnkit predict`, or use a shorter --horizon")
    weights = alpha = None
    if baselines:
        try:
            weights, alpha = ridge_ar(w.train, w.val)
        except DataError:
            pass
    test = part_forecasts(f, w, splits, "test", m, baselines, weights)
    true, places = test.true, test.places
    scales = series_scales(f, splits, m)
    scores = {}
    for name, p in test.preds.items():
        per = []
        for i in np.unique(places[:, 0]):
            rows = np.flatnonzero(places[:, 0] == i)
            per.append({"series": int(i), **metrics(true[rows], p[rows], scales[i])})
        out = metrics(true, p)
        out["mase"] = _mean_over_series(per, "mase")
        out["targets"] = _per_target(true, p, places[:, 0], scales, f.panel.columns[:T])
        scores[name] = (out, per)
    if levels:
        cal_part = "val" if len(w.val) else "train"
        cal = part_forecasts(f, w, splits, cal_part, m, baselines, weights)
        scale = scales[places[:, 0]][:, None, :]  # (W, 1, T)
        scored = np.isfinite(scale).all(axis=(1, 2))  # (a constant series has no scale)
        for name, (out, _) in scores.items():
            lower, upper = calibrate_part(cal, scales, name, levels).bounds(test.preds[name] / scale)
            out["intervals"] = {level_name(lv): interval_scores((true / scale)[scored], lower[k][scored],
                                                                upper[k][scored], lv, np.ones(T))
                                for k, lv in enumerate(levels)}
    out = dict(scores["model"][0])
    out.update(season=m, windows=len(w.test), horizon=H)
    if levels:
        out["calibrated_on"] = "validation windows" if cal_part == "val" else "training windows"
    if len(f.panel) > 1:
        ids = f.panel.ids if f.panel.ids is not None else range(len(f.panel))
        out["series"] = [{"id": _plain(ids[r["series"]]), **{k: v for k, v in r.items() if k != "series"}}
                         for r in scores["model"][1]]
    if baselines:
        out["baselines"] = {name: scores[name][0] for name in BASELINES if name in scores}
        if alpha is not None:
            out["baselines"]["linear_ar"]["ridge_alpha"] = alpha
    return out


def _per_target(true: np.ndarray, pred: np.ndarray, series: np.ndarray, scales: dict, names: Sequence[str]) -> dict:
    """Each target's metrics, by name: MSE, RMSE, MAE and sMAPE over its forecasts (W, H), MASE the
    mean of the series' MASE for it. ``series`` (W,): each window's series; ``scales``: each series'
    MASE scale per target."""
    out = {}
    for j, name in enumerate(names):
        t, p = true[..., j:j + 1], pred[..., j:j + 1]
        m = metrics(t, p)
        m["mase"] = _mean_over_series([metrics(t[series == i], p[series == i], scales[i][j:j + 1])
                                       for i in np.unique(series)], "mase")
        out[name] = m
    return out


def _mean_of(rows: list[dict]) -> dict:
    """The mean over rows of nested dicts of numbers, key by key (a key missing from a row is left out)."""
    out = {}
    for key, value in rows[0].items():
        if not all(key in r for r in rows):
            continue
        values = [r[key] for r in rows]
        out[key] = _mean_of(values) if isinstance(value, dict) else float(np.mean(values))
    return out


def _plain(v: Any) -> Any:
    """An id as JSON writes it (numpy integers become ints)."""
    return v.item() if hasattr(v, "item") else v


def backtest(forecaster: Any, folds: int = 3, refit: bool = False, fold_size: int | None = None,
             season: int | None = None, log: Callable[[str], None] | None = None, levels: Any = None) -> dict:
    """Rolling-origin evaluation: the last ``folds * P`` points of every series are cut into ``folds``
    blocks of P points; fold k forecasts the windows whose targets lie in block k from the points
    before it.

    refit=True: a fresh test model (same config, same seed) is trained on the points before each
    block, with the run's validation share; P defaults to the run's test part (of its shortest
    series). refit=False: the run's test model and scalers for every fold; the blocks must lie in
    its test part, and P defaults to the test part / folds. ``levels``: the intervals scored (see
    :func:`report`). Returns {"folds": [row per fold],
    "mean": {metric: mean over folds}, ...}; each row has the model's metrics, the baselines' and
    origin (of the first series), train_points, windows.
    """
    from .data import Split, fold_split, short_windows

    f = forecaster
    if folds < 1:
        raise ConfigError(f"--folds must be >= 1, got {folds}")
    base = f.splits()
    S, H = base[0].seq_length, base[0].horizon
    short = short_windows(f.config.data)
    lengths = [len(s.values) for s in f.panel.series]
    tested = [n > sp.origin for n, sp in zip(lengths, base)]  # (a series too short for a test part has none)
    held = min((n - sp.origin for n, sp, t in zip(lengths, base, tested) if t), default=0)
    if held < H:
        raise ConfigError(f"the series are too short to hold out a test part of --horizon {H} points; "
                          f"use a shorter --horizon")
    size = fold_size or (held if refit else held // folds)
    if size < H:
        raise ConfigError(f"each fold needs at least --horizon {H} points, got {size}; use fewer --folds "
                          f"or a larger --fold-size")
    if not refit and folds * size > held:
        raise ConfigError(f"without --refit the folds must lie in the run's test part (the last {held} points), "
                          f"but {folds} folds of {size} points take {folds * size}; use --refit, fewer --folds "
                          f"or a smaller --fold-size")
    rows = []
    for k in range(folds):
        splits = []
        for n, sp, t in zip(lengths, base, tested):
            origin = n - (folds - k) * size
            if not t:
                splits.append(sp)
            elif refit:
                if origin < (3 if short else S + H):
                    raise ConfigError(f"{folds} folds of {size} points leave a series of {n} points "
                                      f"{max(origin, 0)} to train on; use fewer --folds or a smaller --fold-size")
                splits.append(fold_split(origin, origin + size, S, H, f.config.data.val_ratio, short=short))
            else:
                fold = fold_split(origin, origin + size, S, H, short=short)
                splits.append(Split(sp.train, sp.val, fold.test, S, H, sp.known))
        model = f.refit(splits) if refit else f
        row = report(model, splits, season, levels=levels)
        row.pop("series", None)
        row.update(fold=k + 1, origin=splits[0].origin, train_points=sum(sp.fit_end for sp in splits))
        rows.append(row)
        if log is not None:
            log(f"fold {k + 1}/{folds}: origin {row['origin']}, {row['windows']} windows, MASE {row['mase']:.3f}")
    scored = ("mse", "rmse", "mae", "smape", "mase", "intervals")
    picked = lambda r: {k: r[k] for k in scored if k in r}  # noqa: E731
    mean = _mean_of([{**picked(r), "baselines": {b: picked(v) for b, v in r["baselines"].items()}} for r in rows])
    return {"folds": rows, "mean": mean, "refit": refit, "fold_size": size, "season": rows[0]["season"]}
