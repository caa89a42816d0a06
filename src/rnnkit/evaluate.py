"""Metrics, baselines and backtests of a forecast, in the data's original units.

Metrics over forecasts y (N windows, H steps, T targets), error e = prediction - truth:

    MSE = mean(e^2)   RMSE = sqrt(MSE)   MAE = mean(|e|)
    sMAPE = 100 * mean(2 |e| / (|truth| + |prediction|))          (a term with 0/0 counts 0)
    MASE = mean over targets of MAE_target / scale_target, scale = mean |v_t - v_{t-m}| over the
           training part (the in-sample seasonal-naive error, season m; m = 1: the naive error)

Baselines, on the same test windows: naive (the window's last value, every step), seasonal naive (the
value one season before each step, within the known past) and a linear autoregression (ridge least
squares from the window's scaled inputs to its H x T targets, fit on the training windows, the ridge
penalty picked on the validation windows).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .errors import ConfigError, DataError

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
    """mean |v_t - v_{t-m}| per column of the training part (N, T): MASE's denominator."""
    if season < 1:
        raise ConfigError(f"--season must be >= 1, got {season}")
    if len(train_values) <= season:
        raise DataError(f"the training part has {len(train_values)} points, too few for --season {season}")
    scale = np.abs(train_values[season:] - train_values[:-season]).mean(axis=0)
    if np.any(scale == 0):
        raise DataError(f"the training part repeats itself every {season} steps exactly, so MASE is undefined; "
                        f"use another --season")
    return scale


def naive(values: np.ndarray, starts: np.ndarray, horizon: int) -> np.ndarray:
    """The last known value for every step: values (N, T), starts (W,) = each window's first target
    index -> (W, horizon, T)."""
    return np.repeat(values[starts - 1][:, None, :], horizon, axis=1)


def seasonal_naive(values: np.ndarray, starts: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """Step h (0-based) of the window starting at s is v[s + h - m * (h // m + 1)]: the same phase one
    season before, never at or after s. -> (W, horizon, T)."""
    h = np.arange(horizon)
    idx = starts[:, None] + h - season * (h // season + 1)  # (W, H)
    if idx.size and idx.min() < 0:
        raise DataError(f"--season {season} reaches before the start of the series for the first test window")
    return values[idx]


def ridge_fit(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """Weights (features + 1, outputs) of ridge least squares with an unpenalised intercept (the last row)."""
    xm, ym = x.mean(axis=0), y.mean(axis=0)
    xc = x - xm
    w = np.linalg.solve(xc.T @ xc + alpha * len(x) * np.eye(x.shape[1]), xc.T @ (y - ym))
    return np.vstack([w, ym - xm @ w])


def ridge_predict(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    return x @ w[:-1] + w[-1]


def ridge_ar(train: Any, val: Any, residual: bool = False) -> tuple[np.ndarray, float]:
    """Ridge autoregression on flattened windows: train/val are datasets of scaled windows (x (N, S, F),
    y (N, H, T)). The penalty with the lowest validation MSE (1e-2 without validation windows).
    residual=True fits y minus the window's last target values (the recurrent head's residual form).
    -> (weights (S*F + 1, H*T), the last row the intercept; alpha)."""
    def xy(ds):
        x, y = (t.double().numpy() for t in ds.tensors)
        if residual:
            y = y - x[:, -1:, :y.shape[2]]
        return x.reshape(len(x), -1), y.reshape(len(y), -1)

    (xt, yt) = xy(train)
    alpha = 1e-2
    if len(val):
        xv, yv = xy(val)
        errors = [np.mean((ridge_predict(ridge_fit(xt, yt, a), xv) - yv) ** 2) for a in RIDGE_ALPHAS]
        alpha = RIDGE_ALPHAS[int(np.argmin(errors))]
    return ridge_fit(xt, yt, alpha), alpha


def report(forecaster: Any, split: Any, season: int | None = None, baselines: bool = True) -> dict:
    """The model's test metrics (top level) and, on the same test windows, the baselines' — for a
    fitted :class:`~rnnkit.Forecaster` and a :class:`~rnnkit.data.Split` of its series (the test part
    of ``split`` is evaluated; its training part sets MASE's scale and fits the linear AR)."""
    from .data import split_windows

    f = forecaster
    m = season or f.config.data.season or 1
    values = f.series.values
    T = f.series.n_targets
    w = split_windows(values, split, f.scaler, T)
    _, pred = f.window_predictions(w.test)
    starts = np.asarray(split.test, dtype=np.int64) + split.seq_length  # (W,) first target of each window
    targets = values[:, :T]
    true = targets[starts[:, None] + np.arange(split.horizon)]  # (W, H, T), float64 as read
    scale = mase_scale(targets[:split.fit_end], m)
    out: dict = metrics(true, pred, scale)
    out.update(season=m, windows=len(w.test), horizon=split.horizon)
    if not baselines:
        return out
    weights, alpha = ridge_ar(w.train, w.val)
    x_test = w.test.tensors[0].double().numpy()
    ar = ridge_predict(weights, x_test.reshape(len(x_test), -1)).reshape(len(x_test), split.horizon, T)
    preds = {"naive": naive(targets, starts, split.horizon),
             "seasonal_naive": seasonal_naive(targets, starts, split.horizon, m),
             "linear_ar": f.scaler.inverse(ar, list(range(T)))}
    out["baselines"] = {name: metrics(true, p, scale) for name, p in preds.items()}
    out["baselines"]["linear_ar"]["ridge_alpha"] = alpha
    return out


def backtest(forecaster: Any, folds: int = 3, refit: bool = False, fold_size: int | None = None,
             season: int | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Rolling-origin evaluation: the last ``folds * P`` points are cut into ``folds`` blocks of P
    points; fold k forecasts the windows whose targets lie in block k from the points before it.

    refit=True: a fresh model (same config, same seed) is trained on the points before each block,
    with the run's validation share; P defaults to the run's test part. refit=False: the run's model
    and scaler for every fold; the blocks must lie in its test part, and P defaults to the test part
    / folds. Returns {"folds": [row per fold], "mean": {metric: mean over folds}, ...}; each row has
    the model's metrics, the baselines' and origin, train_points, windows.
    """
    from .data import Split, fold_split

    f = forecaster
    if folds < 1:
        raise ConfigError(f"--folds must be >= 1, got {folds}")
    base = f.split()
    S, H = base.seq_length, base.horizon
    N = len(f.series.values)
    test_origin = base.test.start + S  # first point the run never trained on
    size = fold_size or ((N - test_origin) if refit else (N - test_origin) // folds)
    if size < H:
        raise ConfigError(f"each fold needs at least --horizon {H} points, got {size}; use fewer --folds "
                          f"or a larger --fold-size")
    start = N - folds * size
    if not refit and start < test_origin:
        raise ConfigError(f"without --refit the folds must lie in the run's test part (the last "
                          f"{N - test_origin} points), but {folds} folds of {size} points start at point "
                          f"{start}; use --refit, fewer --folds or a smaller --fold-size")
    rows = []
    for k in range(folds):
        origin = start + k * size
        if refit:
            split = fold_split(origin, origin + size, S, H, f.config.data.val_ratio)
            model = f.refit(split)
        else:
            fold = fold_split(origin, origin + size, S, H)
            split, model = Split(base.train, base.val, fold.test, S, H), f
        row = report(model, split, season)
        row.update(fold=k + 1, origin=origin, train_points=split.fit_end)
        rows.append(row)
        if log is not None:
            log(f"fold {k + 1}/{folds}: origin {origin}, {row['windows']} windows, MASE {row['mase']:.3f}")
    keys = ("mse", "rmse", "mae", "smape", "mase")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    mean["baselines"] = {b: {k: float(np.mean([r["baselines"][b][k] for r in rows])) for k in keys}
                         for b in BASELINES}
    return {"folds": rows, "mean": mean, "refit": refit, "fold_size": size, "season": rows[0]["season"]}
