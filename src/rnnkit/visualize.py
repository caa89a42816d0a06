"""Plots, written as PNG files headless.

matplotlib is imported lazily and only its object API is used (Figure + the Agg canvas, never pyplot),
so no screen, GUI backend or global figure state is involved and a figure is never saved blank.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .runs import write_bytes


def _figure(width: float = 10, height: float = 4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    write_bytes(path, buf.getvalue())
    return Path(path)


def plot_predictions(y_true: np.ndarray, y_pred: np.ndarray, path: str | Path,
                     title: str = "Test split: true vs predicted") -> Path:
    """Line plot of a whole split, true vs predicted, one point per window (first horizon step,
    first target)."""
    t = np.asarray(y_true).reshape(len(y_true), -1)[:, 0]
    p = np.asarray(y_pred).reshape(len(y_pred), -1)[:, 0]
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(t, label="true", linewidth=2)
    ax.plot(p, label="predicted", linewidth=1.5, linestyle="--")
    ax.set(title=title, xlabel="test window", ylabel="value")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_loss_curve(history: dict, path: str | Path) -> Path:
    """Training (and validation) loss per epoch on a log scale."""
    fig = _figure(8, 4)
    ax = fig.add_subplot()
    ax.plot(history["epoch"], history["train_loss"], label="train (mean batch loss)")
    val = history.get("val_loss") or []
    if any(v is not None for v in val):
        ax.plot(history["epoch"], [np.nan if v is None else v for v in val], label="validation (last step)")
    if history.get("best_epoch"):
        ax.axvline(history["best_epoch"], color="gray", linestyle=":", label=f"kept epoch {history['best_epoch']}")
    ax.set(title="Loss curve", xlabel="epoch", ylabel="MSE (scaled units)", yscale="log")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_forecast(history, forecast, path: str | Path, data, last: int = 240, most: int = 4) -> Path:
    """The end of a history (a Panel: each series' last ``last`` points) and the forecast after it (a
    DataFrame from Forecaster.forecast), one panel per target of each of the first ``most`` series,
    against the time column where there is one, else against the row number. ``data``: the run's
    DataConfig (the column names)."""
    T = history.n_targets
    shown = list(range(min(len(history), most)))
    fig = _figure(10, 3.2 * T * len(shown))
    k = 0
    for i in shown:
        s = history.series[i]
        rows = forecast if history.ids is None else forecast[forecast[data.id_col] == history.ids[i]]
        N, H = len(s.values), len(rows)
        n = min(last, N)
        if s.time is not None:
            x_hist, x_next = s.time.plot_points(N - n, N), s.time.plot_points(N, N + H)
        else:
            x_hist, x_next = np.arange(N - n, N) + 1, N + rows["step"].to_numpy()
        for j, name in enumerate(s.columns[:T]):
            k += 1
            ax = fig.add_subplot(T * len(shown), 1, k)
            values = s.values[N - n:, j]
            ax.plot(x_hist, values, label="history", linewidth=1.5)
            # The forecast line starts at the last known point so the two read as one series.
            ax.plot(np.concatenate([x_hist[-1:], x_next]), np.concatenate([values[-1:], rows[name].to_numpy()]),
                    label=f"forecast ({H} steps)", linewidth=2, linestyle="--", marker=".")
            title = name if history.ids is None else f"{name}, {data.id_col} {history.ids[i]}"
            ax.set(title=title, xlabel=data.time_col or "row", ylabel=name)
            ax.legend()
            ax.grid(alpha=0.3)
    if len(history) > most:
        fig.suptitle(f"the first {most} of {len(history)} series")
    return _save(fig, path)
