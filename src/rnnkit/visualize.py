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


def plot_forecast(history, forecast, path: str | Path, last: int = 240) -> Path:
    """The end of a history (a TableSeries: its last ``last`` points) and the forecast after it (a
    DataFrame from Forecaster.forecast: step, [time column,] one column per target), one panel per
    target, against time when the history has dates, else against the row number."""
    T = history.n_targets
    values = history.values[-last:, :T]  # (n, T)
    n, N = len(values), len(history.values)
    dated = history.time is not None and len(forecast.columns) > T + 1
    x_hist = history.time[-last:] if dated else np.arange(N - n, N) + 1
    x_next = forecast.iloc[:, 1].to_numpy() if dated else N + forecast["step"].to_numpy()
    fig = _figure(10, 3.2 * T)
    for j, name in enumerate(history.columns[:T]):
        ax = fig.add_subplot(T, 1, j + 1)
        ax.plot(x_hist, values[:, j], label="history", linewidth=1.5)
        # The forecast line starts at the last known point so the two read as one series.
        ax.plot(np.concatenate([x_hist[-1:], x_next]), np.concatenate([values[-1:, j], forecast[name].to_numpy()]),
                label=f"forecast ({len(forecast)} steps)", linewidth=2, linestyle="--", marker=".")
        ax.set(title=name, xlabel="time" if dated else "row", ylabel=name)
        ax.legend()
        ax.grid(alpha=0.3)
    return _save(fig, path)
