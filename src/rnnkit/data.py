"""Data: the seed's generators, the chronological split, scaling, windows and loaders.

The flow, one call per arrow (see DESIGN.md)::

    make_series(cfg) -> chronological_split(...) -> Scaler.fit(train part) -> make_windows(...) -> make_loaders(...)

A *series* is an array (N, F) of N time points and F features. A *window* i takes the points
``i .. i+seq_length-1`` as input x (seq_length, F) and the next ``horizon`` points' target columns as
y (horizon, T). With the defaults this is the seed exactly: 950 windows of the 1000-point wave,
x = data[i:i+50], y = data[i+50]; the first int(0.8 * 950) = 760 windows train, the other 190 test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from .config import DataConfig
from .errors import DataError


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


def make_series(cfg: DataConfig) -> np.ndarray:
    """The configured series as float64 (N, F)."""
    return GENERATORS[cfg.source](cfg.seq_length, cfg.num_samples)[:, None]  # (N, 1)


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
    int(val_ratio * that) of them become validation; the rest of the windows test. Test (and
    validation) windows read their first inputs from the points before them, as in the seed.
    """
    W = num_windows(n_points, seq_length, horizon)
    n_fit = int(train_ratio * W)
    n_val = int(val_ratio * n_fit)
    if n_fit - n_val < 1 or W - n_fit < 1:
        raise DataError(
            f"a series of {n_points} points gives {W} windows of seq_length={seq_length}, too few to "
            f"split into training ({n_fit - n_val}), validation ({n_val}) and test ({W - n_fit}) windows; "
            f"use more samples or a shorter --seq-length"
        )
    return Split(range(0, n_fit - n_val), range(n_fit - n_val, n_fit), range(n_fit, W), seq_length, horizon)


# ---- scaling -------------------------------------------------------------------------------------

class Scaler:
    """Per-feature standardisation z = (v - mean) / std; the identity when kind == "none"."""

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
        std = train_part.std(axis=0)
        if not np.all(np.isfinite(train_part)):
            raise DataError("the training part of the series contains NaN or inf values")
        return cls(kind, train_part.mean(axis=0), np.where(std > 0, std, 1.0))

    def transform(self, v: np.ndarray) -> np.ndarray:
        return (v - self.mean) / self.std

    def inverse(self, z: np.ndarray, cols=None) -> np.ndarray:
        """Back to original units; ``cols`` picks the features z holds (default: all)."""
        mean, std = (self.mean, self.std) if cols is None else (self.mean[cols], self.std[cols])
        return z * std + mean

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
    """The scaled windows of each part of a split, and the scaler fit on the training part."""

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    scaler: Scaler


def prepare(cfg: DataConfig, scaler: Scaler | None = None) -> Windows:
    """Series -> split -> scaler (fit on the training part, unless a saved one is given) -> windows."""
    series = make_series(cfg)
    split = chronological_split(len(series), cfg.seq_length, cfg.horizon, cfg.train_ratio, cfg.val_ratio)
    if scaler is None:
        scaler = Scaler.fit(series[:split.fit_end], cfg.scaling)
    scaled = scaler.transform(series)
    part = lambda r: make_windows(scaled, cfg.seq_length, cfg.horizon, r)  # noqa: E731
    return Windows(part(split.train), part(split.val), part(split.test), scaler)


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
