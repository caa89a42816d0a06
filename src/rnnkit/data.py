"""Data: the seed's generators, the chronological split, scaling, windows and loaders.

The flow, one call per arrow (see DESIGN.md)::

    load_series(cfg) -> resolve_data(...) -> chronological_split(...) -> split_windows(...) -> make_loaders(...)

``split_windows`` fits the scaler on the training part only (or takes a saved one) and cuts the windows.
A *series* is an array (N, F) of N time points and F features, the target columns first (CSV tables:
:mod:`rnnkit.csvdata`). A *window* i takes the points ``i .. i+seq_length-1`` as input x
(seq_length, F) and the next ``horizon`` points' target columns as y (horizon, T). With the defaults
this is the seed exactly: 950 windows of the 1000-point wave, x = data[i:i+50], y = data[i+50]; the
first int(0.8 * 950) = 760 windows train, the other 190 test.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from .config import DataConfig
from .csvdata import TableSeries, frame_series, read_csv
from .errors import ConfigError, DataError


# ---- the seed's generators -----------------------------------------------------------------------

def _seed_x(num_samples: int) -> np.ndarray:
    return np.linspace(0, num_samples * 0.1, num_samples)


def generate_sine_wave(seq_length: int = 50, num_samples: int = 1000) -> np.ndarray:
    """The seed's sine wave: sin(x), x = linspace(0, num_samples*0.1, num_samples); float64 (num_samples,).

    ``seq_length`` is accepted for the seed's signature; the series does not depend on it."""
    return np.sin(_seed_x(num_samples))


def generate_combined_wave(seq_length: int = 50, num_samples: int = 1000) -> np.ndarray:
    """The seed's combined wave: sin(x) + cos(x) + sign(sin(x)); float64 (num_samples,)."""
    x = _seed_x(num_samples)
    return np.sin(x) + np.cos(x) + np.sign(np.sin(x))


GENERATORS = {"combined": generate_combined_wave, "sine": generate_sine_wave}


def load_series(cfg: DataConfig, table: Any = None) -> TableSeries:
    """The configured series: a seed wave, the CSV file ``cfg.csv``, or ``table`` (a DataFrame or array,
    read with the config's column settings) when given."""
    if table is None and cfg.source in GENERATORS:
        wave = GENERATORS[cfg.source](cfg.seq_length or 50, cfg.num_samples)[:, None]  # (N, 1)
        return TableSeries(wave, ("value",), 1)
    if table is not None:
        return frame_series(table, cfg.target, cfg.features, cfg.time_col, cfg.fill)
    if not cfg.csv:
        raise ConfigError("a CSV series needs its file (--data PATH.csv)")
    return read_csv(cfg.csv, cfg.target, cfg.features, cfg.time_col, cfg.fill)


def auto_seq_length(n_points: int, season: int) -> int:
    """Input steps for a real series of n_points: two seasons, or a tenth of the series if longer, but
    at most 64 and a quarter of the series (so a short series keeps enough windows to train and test)."""
    return max(2, min(max(2 * season, n_points // 10), 64, n_points // 4))


def resolve_data(cfg: DataConfig, series: TableSeries) -> DataConfig:
    """``cfg`` with its automatic settings made concrete for this series: season (0 -> what the time
    column implies, else 1) and seq_length (0 -> 50 for the seed's waves, else auto_seq_length)."""
    season = cfg.season or series.season
    seq_length = cfg.seq_length or (50 if cfg.source in GENERATORS else auto_seq_length(len(series.values), season))
    if cfg.strategy == "recursive" and series.n_targets != series.values.shape[1]:
        raise ConfigError("--strategy recursive feeds its forecasts back as inputs, so every input must be a "
                          "target; drop --features or use --strategy direct")
    scaling = cfg.scaling
    if scaling == "auto":
        scaling = "log" if np.all(series.values > 0) else "standard"
    return replace(cfg, season=season, seq_length=seq_length, scaling=scaling)


# ---- split ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Split:
    """Window index ranges [start, stop) of each part, in time order: train, then val, then test."""

    train: range
    val: range
    test: range
    seq_length: int
    horizon: int

    @property
    def fit_end(self) -> int:
        """Number of leading series points the training windows touch: all the scaler may see."""
        return self.train.stop - 1 + self.seq_length + self.horizon


def num_windows(n_points: int, seq_length: int, horizon: int = 1) -> int:
    return n_points - seq_length - horizon + 1


def chronological_split(n_points: int, seq_length: int, horizon: int = 1, train_ratio: float = 0.8,
                        val_ratio: float = 0.0) -> Split:
    """Split the windows of an n_points series in time order.

    The first int(train_ratio * W) of the W windows are the seed's training windows; the last
    int(val_ratio * that) of them become validation; the windows after them test. Test (and
    validation) windows read their first inputs from the points before them, as in the seed. With
    horizon H > 1 no target is in two parts: see :func:`fold_split`.
    """
    W = num_windows(n_points, seq_length, horizon)
    n_fit = int(train_ratio * W)
    n_val = int(val_ratio * n_fit)
    gap = horizon - 1
    if n_fit - n_val - (gap if n_val else 0) < 1 or W - n_fit - gap < 1:
        raise DataError(
            f"a series of {n_points} points gives {W} windows of seq_length={seq_length} and "
            f"horizon={horizon}, too few to split into training, validation and test windows; use a "
            f"longer series, a shorter --seq-length or a shorter --horizon"
        )
    return fold_split(n_fit + seq_length + gap, n_points, seq_length, horizon, val_ratio)


def fold_split(origin: int, stop: int, seq_length: int, horizon: int = 1, val_ratio: float = 0.0) -> Split:
    """Train on the points before ``origin``, test on the windows whose targets are all in [origin, stop).

    The windows whose targets end before origin are the fitting windows; the last int(val_ratio * them)
    validate, and the H-1 windows before those are dropped so that no target is both a training and a
    validation target (H = horizon; none are dropped for H = 1, the seed's split).
    """
    S, H = seq_length, horizon
    n_fit = num_windows(origin, S, H)
    n_val = int(val_ratio * n_fit)
    train_stop = n_fit - n_val - (H - 1 if n_val else 0)
    test = range(max(origin - S, 0), max(stop - S - H + 1, 0))
    if train_stop < 1 or len(test) < 1:
        raise DataError(f"{origin} points before the test part leave {max(train_stop, 0)} training windows of "
                        f"seq_length={S} and horizon={H}, and the test part has {len(test)} windows; "
                        f"use a longer series, a shorter --seq-length or a shorter --horizon")
    return Split(range(0, train_stop), range(n_fit - n_val, n_fit), test, S, H)


# ---- scaling -------------------------------------------------------------------------------------

class Scaler:
    """Per-feature standardisation z = (v - mean) / std; "log" standardises log(v) (positive series
    whose swings grow with their level); the identity when kind == "none"."""

    def __init__(self, kind: str = "none", mean=None, std=None) -> None:
        self.kind = kind
        self.mean = np.zeros(1) if mean is None else np.asarray(mean, dtype=np.float64)
        self.std = np.ones(1) if std is None else np.asarray(std, dtype=np.float64)

    @classmethod
    def fit(cls, train_part: np.ndarray, kind: str) -> "Scaler":
        """Fit on the training part only (N_train, F)."""
        if kind == "none":
            F = train_part.shape[1]
            return cls(kind, np.zeros(F), np.ones(F))
        if not np.all(np.isfinite(train_part)):
            raise DataError("the training part of the series contains NaN or inf values")
        if kind == "log":
            train_part = cls._log(train_part)
        std = train_part.std(axis=0)
        return cls(kind, train_part.mean(axis=0), np.where(std > 0, std, 1.0))

    @staticmethod
    def _log(v: np.ndarray) -> np.ndarray:
        if np.any(v <= 0):
            raise DataError("--scaling log needs every value of the series to be positive; "
                            "use --scaling standard")
        return np.log(v)

    def transform(self, v: np.ndarray) -> np.ndarray:
        return ((self._log(v) if self.kind == "log" else v) - self.mean) / self.std

    def inverse(self, z: np.ndarray, cols=None) -> np.ndarray:
        """Back to original units; ``cols`` picks the features z holds (default: all)."""
        mean, std = (self.mean, self.std) if cols is None else (self.mean[cols], self.std[cols])
        v = z * std + mean
        return np.exp(v) if self.kind == "log" else v

    def to_dict(self) -> dict:
        return {"kind": self.kind, "mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "Scaler":
        return cls(d["kind"], d["mean"], d["std"])


# ---- windows and loaders -------------------------------------------------------------------------

def make_windows(series: np.ndarray, seq_length: int, horizon: int = 1, windows: range | None = None,
                 target_cols: tuple[int, ...] = (0,)) -> TensorDataset:
    """Windows of a (scaled) series (N, F) as float32 tensors x (W, seq_length, F), y (W, horizon, T).

    Window i: x = series[i : i+seq_length], y = series[i+seq_length : i+seq_length+horizon, target_cols].
    """
    s = torch.as_tensor(np.ascontiguousarray(series), dtype=torch.float32)  # (N, F)
    W = num_windows(len(s), seq_length, horizon)
    windows = range(W) if windows is None else windows
    if W < 1:
        raise DataError(f"a series of {len(s)} points is too short for seq_length={seq_length}")
    all_x = s.unfold(0, seq_length, 1).transpose(1, 2)  # (N-S+1, S, F)
    all_y = s[seq_length:, list(target_cols)].unfold(0, horizon, 1).transpose(1, 2)  # (N-S-H+1, H, T)
    idx = slice(windows.start, windows.stop)
    return TensorDataset(all_x[idx].contiguous(), all_y[idx].contiguous())


class Windows(NamedTuple):
    """The scaled windows of each part of a split, the scaler fit on the training part, and the split."""

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    scaler: Scaler
    split: Split


def split_windows(values: np.ndarray, split: Split, scaler: Scaler | str, n_targets: int = 1) -> Windows:
    """Scaler (fit on the points the training windows touch, or a saved Scaler) -> scaled windows of
    each part. values (N, F), the first n_targets columns the targets."""
    if isinstance(scaler, str):
        scaler = Scaler.fit(values[:split.fit_end], scaler)
    scaled = scaler.transform(values)
    part = lambda r: make_windows(scaled, split.seq_length, split.horizon, r, tuple(range(n_targets)))  # noqa: E731
    return Windows(part(split.train), part(split.val), part(split.test), scaler, split)


def prepare(cfg: DataConfig, scaler: Scaler | None = None) -> Windows:
    """Series -> split -> scaler (fit on the training part, unless a saved one is given) -> windows."""
    series = load_series(cfg)
    cfg = resolve_data(cfg, series)
    split = chronological_split(len(series.values), cfg.seq_length, cfg.horizon, cfg.train_ratio, cfg.val_ratio)
    return split_windows(series.values, split, scaler or cfg.scaling, series.n_targets)


class Loaders(NamedTuple):
    train: DataLoader
    val: DataLoader | None  # None when there are no validation windows
    test: DataLoader
    scaler: Scaler


def make_loaders(windows: Windows, batch_size: int, seed: int = 0) -> Loaders:
    """Training windows shuffled (seeded), validation and test in time order, as in the seed."""
    g = torch.Generator().manual_seed(seed)
    return Loaders(
        DataLoader(windows.train, batch_size=batch_size, shuffle=True, generator=g),
        DataLoader(windows.val, batch_size=batch_size) if len(windows.val) else None,
        DataLoader(windows.test, batch_size=batch_size),
        windows.scaler,
    )


def get_data_loaders(seq_length: int = 50, num_samples: int = 1000, batch_size: int = 32,
                     train_ratio: float = 0.8, val_ratio: float = 0.0, scaling: str = "none",
                     source: str = "combined", seed: int = 0) -> Loaders:
    """The seed's loaders (defaults: combined wave, 760 shuffled training windows, 190 test windows,
    no scaling), with optional validation windows carved from the end of the training windows and
    optional standard scaling fit on the training part only. Returns (train, val, test, scaler)."""
    cfg = DataConfig(source=source, num_samples=num_samples, seq_length=seq_length, train_ratio=train_ratio,
                     val_ratio=val_ratio, batch_size=batch_size, scaling=scaling)
    cfg.validate()
    return make_loaders(prepare(cfg), batch_size, seed)
