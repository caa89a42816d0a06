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


def _x(series, start: int, stop: int):
    """Plot positions of grid points [start, stop) of a series: its times, or time steps 1, 2, ..."""
    return series.time.plot_points(start, stop) if series.time is not None else np.arange(start, stop) + 1


def _title(panel, i: int, name: str, data) -> str:
    """A panel's title: the target, and which series (its id) or which generated wave."""
    if panel.ids is not None:
        return f"{name}, {data.id_col} {panel.ids[i]}"
    return name if data.source == "csv" else f"{data.source} wave"


def _shown(panel, most: int) -> tuple[list[int], str]:
    """The series a figure shows (the first ``most``) and its title's note on them."""
    shown = list(range(min(len(panel), most)))
    return shown, (f"; the first {most} of {len(panel)} series" if len(panel) > most else "")


def plot_predictions(y_pred: np.ndarray, places: np.ndarray, panel, path: str | Path, data, most: int = 3) -> Path:
    """The test windows' forecasts against the true values, one panel per target of each of the first
    ``most`` series, against the time column where there is one, else the time step: the forecasts
    made 1 step ahead and, with a longer horizon H, H steps ahead (the steps between are not drawn).
    y_pred (W, H, T) in original units and places (W, 2), each window's series and the grid position
    of its first target (:func:`rnnkit.data.window_places`); panel: the series (a Panel) the windows
    are cut from; data: the run's DataConfig (the column names)."""
    H, T = y_pred.shape[1], panel.n_targets
    shown, note = _shown(panel, most)
    fig = _figure(10, 3.2 * T * len(shown) + 0.4)
    k = 0
    for i in shown:
        s = panel.series[i]
        rows = places[:, 0] == i
        starts = places[rows, 1]
        if not len(starts):
            continue
        first, stop = int(starts.min()), int(starts.max()) + H
        x = _x(s, first, stop)
        few = stop - first <= 60
        for j, name in enumerate(s.columns[:T]):
            k += 1
            ax = fig.add_subplot(T * len(shown), 1, k)
            ax.plot(x, s.values[first:stop, j], label="true", linewidth=2, marker="." if few else None)
            for h in sorted({0, H - 1}):
                ahead = "1 step" if h == 0 else f"{h + 1} steps"
                ax.plot(x[starts + h - first], y_pred[rows, h, j], label=f"forecast {ahead} ahead",
                        linewidth=1.5, linestyle="--" if h == 0 else ":", marker="." if few else None)
            ax.set(title=_title(panel, i, name, data), xlabel=data.time_col or "time step", ylabel=name)
            ax.legend()
            ax.grid(alpha=0.3)
    fig.suptitle(f"Test part: true values and the test model's forecasts ({len(y_pred)} windows, horizon {H})"
                 f"{note}")
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


def _levels(forecast, name: str) -> list[str]:
    """The interval levels a forecast frame has for target ``name`` (its ``{name}_lo{level}`` columns
    with their ``_hi``), narrowest first."""
    prefix = f"{name}_lo"
    found = [c[len(prefix):] for c in forecast.columns if c.startswith(prefix) and f"{name}_hi{c[len(prefix):]}" in forecast]
    return sorted(found, key=float)


def plot_forecast(history, forecast, path: str | Path, data, last: int | None = None, most: int = 4) -> Path:
    """The end of a history (a Panel) and the forecast after it (a DataFrame from
    Forecaster.forecast, with its prediction intervals drawn as bands where it has them), one panel per target of each of the first ``most`` series, against the time
    column where there is one, else the time step. ``last``: the history points shown before each
    forecast; default enough to read the forecast against: four horizons, four seasons or the model's
    window, at least 36. ``data``: the run's DataConfig (the column names, horizon and season)."""
    T = history.n_targets
    shown, note = _shown(history, most)
    fig = _figure(10, 3.2 * T * len(shown))
    k = 0
    for i in shown:
        s = history.series[i]
        rows = forecast if history.ids is None else forecast[forecast[data.id_col] == history.ids[i]]
        N, H = len(s.values), len(rows)
        n = min(last or max(4 * H, 4 * data.season, data.seq_length, 36), N)
        x_hist, x_next = _x(s, N - n, N), _x(s, N, N + H)
        for j, name in enumerate(s.columns[:T]):
            k += 1
            ax = fig.add_subplot(T * len(shown), 1, k)
            values = s.values[N - n:, j]
            ax.plot(x_hist, values, label=f"history (last {n} points)" if n < N else "history", linewidth=1.5)
            # The forecast line starts at the last known point so the two read as one series.
            line, = ax.plot(np.concatenate([x_hist[-1:], x_next]), np.concatenate([values[-1:], rows[name].to_numpy()]),
                            label=f"forecast ({H} steps)", linewidth=2, linestyle="--", marker=".")
            for level, alpha in zip(_levels(rows, name), (0.3, 0.18, 0.1, 0.06)):  # the narrowest darkest
                ax.fill_between(x_next, rows[f"{name}_lo{level}"].to_numpy(), rows[f"{name}_hi{level}"].to_numpy(),
                                color=line.get_color(), alpha=alpha, linewidth=0, label=f"{level}% interval")
            ax.set(title=_title(history, i, name, data), xlabel=data.time_col or "time step", ylabel=name)
            ax.legend()
            ax.grid(alpha=0.3)
    if note:
        fig.suptitle(note[2:])
    return _save(fig, path)
