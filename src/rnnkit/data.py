"""Data: the seed's generators, the chronological split, scaling, windows and loaders.

The flow, one call per arrow (see DESIGN.md)::

    load_series(cfg) -> resolve_data(...) -> split_panel(...) -> split_windows(...) -> make_loaders(...)

A *series* is an array (N, F) of N time points and F features, the target columns first; a *panel*
is one or more series with the same columns (:class:`rnnkit.csvdata.Panel`). A *window* i of a
series takes the points ``i .. i+seq_length-1`` as input x (seq_length, F) and the next ``horizon``
points' target columns as y (horizon, T). With the defaults this is the seed exactly: 950 windows of
the 1000-point wave, x = data[i:i+50], y = data[i+50]; the first int(0.8 * 950) = 760 windows train,
the other 190 test.

Tables (a CSV or DataFrame) also use *short windows*, so that a series shorter than seq_length +
horizon still trains: a window may start before the series (i < 0: its missing inputs repeat the
first point) and a training window's targets may run past what training may see (they are masked:
the loss skips them). Each series is scaled on its own training part.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from .config import DataConfig
from .csvdata import Panel, TableSeries, frame_panel, read_csv
from .errors import ConfigError, DataError

MIN_POINTS = 3  # the fewest points a series of a table may have: two changes to learn from


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


def load_series(cfg: DataConfig, table: Any = None) -> Panel:
    """The configured series as a panel: a seed wave, the CSV file ``cfg.csv``, or ``table`` (a
    DataFrame, Series or array, read with the config's column settings) when given."""
    if table is None and cfg.source in GENERATORS:
        wave = GENERATORS[cfg.source](cfg.seq_length or 50, cfg.num_samples)[:, None]  # (N, 1)
        return Panel((TableSeries(wave, ("value",), 1),))
    if table is not None:
        return frame_panel(table, cfg.target, cfg.features, cfg.time_col, cfg.fill, id_col=cfg.id_col,
                           date_format=cfg.date_format, future_features=cfg.future_features, calendar=cfg.calendar)
    if not cfg.csv:
        raise ConfigError("a CSV series needs its file (--data PATH.csv)")
    return read_csv(cfg.csv, cfg.target, cfg.features, cfg.time_col, cfg.fill, cfg.id_col, cfg.date_format, cfg.sep,
                    cfg.future_features, cfg.calendar)


def short_windows(cfg: DataConfig) -> bool:
    """Whether a source's series are cut into short windows (tables), or only whole ones (the waves)."""
    return cfg.source not in GENERATORS


def auto_seq_length(n_points: int, season: int, horizon: int = 1) -> int:
    """Input steps for a table whose series have n_points (the median): two seasons or two
    horizons, whichever is longer, but at most 64 and half the series (at least 2)."""
    return max(2, min(max(2 * season if season > 1 else 0, 2 * horizon, 4), 64, n_points // 2))


def resolve_data(cfg: DataConfig, panel: Panel) -> DataConfig:
    """``cfg`` with its automatic settings made concrete for this panel: season (0 -> what the time
    column implies, else 1) and seq_length (0 -> 50 for the seed's waves, else auto_seq_length)."""
    season = cfg.season or panel.season
    lengths = [len(s.values) for s in panel.series]
    seq_length = cfg.seq_length or (50 if cfg.source in GENERATORS else
                                    auto_seq_length(int(np.median(lengths)), season, cfg.horizon))
    if cfg.strategy == "recursive" and panel.n_targets != len(panel.columns):
        raise ConfigError("--strategy recursive feeds its forecasts back as inputs, so every input must be a "
                          "target; drop --features, --future-features and --calendar, or use --strategy direct")
    if short_windows(cfg):
        short = [i for i, n in enumerate(lengths) if n < MIN_POINTS]
        if short:
            raise DataError(f"{panel.label(short[0])} has {lengths[short[0]]} point"
                            f"{'s' if lengths[short[0]] != 1 else ''}; a series needs at least {MIN_POINTS} to "
                            f"train on" + (f" ({len(short)} ids are that short; drop them)" if len(short) > 1 else ""))
    return replace(cfg, season=season, seq_length=seq_length)


# ---- split ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Split:
    """One series' window index ranges [start, stop) of each part, in time order: train, then val,
    then test. ``known``: with short windows, training targets at or after this point are masked
    (-1: every training target is known, the seed's whole windows)."""

    train: range
    val: range
    test: range
    seq_length: int
    horizon: int
    known: int = -1

    @property
    def fit_end(self) -> int:
        """Number of leading series points the training windows touch: all the scaler may see."""
        if self.known >= 0:
            return self.known
        return self.train.stop - 1 + self.seq_length + self.horizon

    @property
    def origin(self) -> int:
        """The first point a test window forecasts (the series' length when it has no test part)."""
        return self.test.start + self.seq_length if len(self.test) else self.fit_end


def num_windows(n_points: int, seq_length: int, horizon: int = 1) -> int:
    return n_points - seq_length - horizon + 1


def chronological_split(n_points: int, seq_length: int, horizon: int = 1, train_ratio: float = 0.8,
                        val_ratio: float = 0.0, short: bool = False) -> Split:
    """Split the windows of an n_points series in time order.

    Whole windows (the seed's): the first int(train_ratio * W) of the W windows are the seed's
    training windows; the last int(val_ratio * that) of them become validation; the windows after
    them test. Test (and validation) windows read their first inputs from the points before them, as
    in the seed. With horizon H > 1 no target is in two parts: see :func:`fold_split`.
    Short windows: the last max(H, (1 - train_ratio) * n_points) points are the test part; a series
    too short to keep MIN_POINTS before it has no test part (it trains on all its points).
    """
    if short:
        held = max(horizon, round((1 - train_ratio) * n_points))
        if n_points - held < MIN_POINTS:  # no test part: it trains on all its points, none held out
            return fold_split(n_points, n_points, seq_length, horizon, 0.0, short=True)
        return fold_split(n_points - held, n_points, seq_length, horizon, val_ratio, short=True)
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


def fold_split(origin: int, stop: int, seq_length: int, horizon: int = 1, val_ratio: float = 0.0,
               short: bool = False) -> Split:
    """Train on the points before ``origin``, test on the windows whose targets are all in [origin, stop).

    Whole windows: the windows whose targets end before origin are the fitting windows; the last
    int(val_ratio * them) validate, and the H-1 windows before those are dropped so that no target
    is both a training and a validation target (H = horizon; none are dropped for H = 1, the seed's
    split). Short windows: every window with one input and one target before origin trains (the
    targets from origin on masked); the last int(val_ratio * whole windows) whole windows before
    origin validate, and training then sees only the points before their first target.
    """
    S, H = seq_length, horizon
    if short:
        test = range(origin - S, max(stop - S - H + 1, origin - S))
        n_val = int(val_ratio * max(num_windows(origin, S, H), 0))
        known = origin - H - n_val + 1 if n_val else origin
        if known < MIN_POINTS:  # too short to hold validation windows out
            n_val, known = 0, origin
        val = range(known - S, known - S + n_val)
        return Split(range(1 - S, known - S), val, test, S, H, known)
    test = range(max(origin - S, 0), max(stop - S - H + 1, 0))
    n_fit = num_windows(origin, S, H)
    n_val = int(val_ratio * n_fit)
    train_stop = n_fit - n_val - (H - 1 if n_val else 0)
    if train_stop < 1 or len(test) < 1:
        raise DataError(f"{origin} points before the test part leave {max(train_stop, 0)} training windows of "
                        f"seq_length={S} and horizon={H}, and the test part has {len(test)} windows; "
                        f"use a longer series, a shorter --seq-length or a shorter --horizon")
    return Split(range(0, train_stop), range(n_fit - n_val, n_fit), test, S, H)


def split_panel(panel: Panel, cfg: DataConfig, whole: bool = False) -> list[Split]:
    """Each series' split by the config (``whole``: train on every point, for the model that
    forecasts: no test part, and validation windows only to choose the epochs)."""
    short = short_windows(cfg)
    out = []
    for s in panel.series:
        n = len(s.values)
        if whole:
            out.append(fold_split(n, n, cfg.seq_length, cfg.horizon, 0.0, short=True))
        else:
            out.append(chronological_split(n, cfg.seq_length, cfg.horizon, cfg.train_ratio, cfg.val_ratio, short))
    return out


# ---- scaling -------------------------------------------------------------------------------------

class Scaler:
    """One series' scaling, per feature: z_t = (g(v_t) - a_t - mean) / std at grid position t.

    kind "standard": g(v) = v; "log": g(v) = log v (positive series whose swings grow with their
    level); "none": the identity. The adjustment a_t = seasonal[t mod m] + drift * t: ``seasonal``
    (m, F), the seasonal indices of g(v) by phase, and ``drift`` (F,), its mean change per step; zero
    for features and where not fit. Fit with ``unit="change"``, the targets' drift is removed and their
    std is the mean absolute change of the adjusted training part, not its standard deviation (the
    forecaster reads windows relative to their last value, so a step's change is what its inputs
    measure, and the zero forecast is then the last value plus the drift: a random walk with drift).
    """

    def __init__(self, kind: str = "none", mean=None, std=None, seasonal=None, drift=None) -> None:
        self.kind = kind
        self.mean = np.zeros(1) if mean is None else np.asarray(mean, dtype=np.float64)
        self.std = np.ones(1) if std is None else np.asarray(std, dtype=np.float64)
        self.seasonal = None if seasonal is None or len(seasonal) == 0 else np.asarray(seasonal, dtype=np.float64)
        self.drift = None if drift is None else np.asarray(drift, dtype=np.float64)

    @classmethod
    def fit(cls, train_part: np.ndarray, kind: str, season: int = 1, n_targets: int = 0,
            unit: str = "std") -> "Scaler":
        """Fit on the training part only (N_train, F), at grid positions 0, 1, ... ``season`` > 1 and
        ``n_targets``: remove the targets' seasonal indices where the ACF test finds them
        (:func:`seasonal_indices`); ``unit="change"``: also their drift (see the class)."""
        if kind == "none":
            F = train_part.shape[1]
            return cls(kind, np.zeros(F), np.ones(F))
        if not np.all(np.isfinite(train_part)):
            raise DataError("the training part of the series contains NaN or inf values")
        if kind == "log":
            train_part = cls._log(train_part)
        F, t = train_part.shape[1], np.arange(len(train_part))
        seasonal = drift = None
        if season > 1 and n_targets:
            idx = [seasonal_indices(train_part[:, j], season) for j in range(n_targets)]
            if any(i is not None for i in idx):
                seasonal = np.zeros((season, F))
                for j, i in enumerate(idx):
                    if i is not None:
                        seasonal[:, j] = i
                train_part = train_part - seasonal[t % season]
        if unit != "change":
            std = train_part.std(axis=0)
            return cls(kind, train_part.mean(axis=0), np.where(std > 0, std, 1.0), seasonal)
        steps = np.diff(train_part, axis=0)
        if n_targets and len(train_part) > 1:
            drift = np.zeros(F)
            drift[:n_targets] = steps[:, :n_targets].mean(axis=0)
            train_part, steps = train_part - np.outer(t, drift), steps - drift
        std = np.abs(steps).mean(axis=0) if len(steps) else np.zeros(F)
        # (a straight line's adjusted changes are all 0: then its drift, its size, or 1)
        for fallback in (np.abs(drift) if drift is not None else np.zeros(F), np.abs(train_part).mean(axis=0)):
            std = np.where(std > 0, std, fallback)
        std[n_targets:] = train_part[:, n_targets:].std(axis=0)  # features: standardised as they are
        return cls(kind, train_part.mean(axis=0), np.where(std > 0, std, 1.0), seasonal, drift)

    @staticmethod
    def _log(v: np.ndarray) -> np.ndarray:
        if np.any(v <= 0):
            raise DataError("--scaling log needs every value of the series to be positive; "
                            "use --scaling standard")
        return np.log(v)

    def _adjustment(self, positions, cols) -> np.ndarray | float:
        """a_t at grid positions (any shape), with a last axis of features (``cols``: those)."""
        a = 0.0
        positions = np.asarray(positions)
        if self.seasonal is not None:
            s = self.seasonal if cols is None else self.seasonal[:, cols]
            a = a + s[positions % len(s)]
        if self.drift is not None:
            d = self.drift if cols is None else self.drift[cols]
            a = a + positions[..., None] * d
        return a

    @property
    def positional(self) -> bool:
        """Whether scaling depends on the grid position (seasonal indices or a drift)."""
        return self.seasonal is not None or self.drift is not None

    def transform(self, v: np.ndarray, start: int = 0) -> np.ndarray:
        """Scaled values of rows v (N, F) at grid positions start, start+1, ..."""
        g = self._log(v) if self.kind == "log" else v
        if self.positional:
            g = g - self._adjustment(start + np.arange(len(v)), None)
        return (g - self.mean) / self.std

    def inverse(self, z: np.ndarray, cols=None, positions=None) -> np.ndarray:
        """Back to original units; ``cols`` picks the features z holds (default: all); ``positions``
        (broadcastable to z without its last axis): the grid position of each row, which a positional
        scaler needs."""
        mean, std = (self.mean, self.std) if cols is None else (self.mean[cols], self.std[cols])
        v = z * std + mean
        if self.positional:
            if positions is None:
                raise ValueError("a seasonal or drifting scaler needs the positions of the values it inverts")
            v = v + self._adjustment(positions, cols)
        return np.exp(v) if self.kind == "log" else v

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "mean": self.mean.tolist(), "std": self.std.tolist()}
        if self.seasonal is not None:
            d["seasonal"] = self.seasonal.tolist()
        if self.drift is not None:
            d["drift"] = self.drift.tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Scaler":
        return cls(d["kind"], d["mean"], d["std"], d.get("seasonal"), d.get("drift"))


def seasonal_indices(v: np.ndarray, season: int) -> np.ndarray | None:
    """Additive seasonal indices (m,) of a series by phase (position mod m), summing to zero, or None
    when the series does not show the season: it needs three seasons, and its autocorrelation at
    lag m must pass the 90% test that the Theta method uses (|r_m| > 1.645 sqrt((1 + 2 sum_{k<m}
    r_k^2) / n)). Indices: the mean by phase of the series minus its centred moving average of one
    season (classical decomposition)."""
    n, m = len(v), season
    if m < 2 or n < 3 * m:
        return None
    x = v - v.mean()
    denom = float(np.dot(x, x))
    if denom == 0:
        return None
    r = np.array([np.dot(x[k:], x[:n - k]) for k in range(1, m + 1)]) / denom
    if abs(r[m - 1]) <= 1.645 * np.sqrt((1 + 2 * np.sum(r[:m - 1] ** 2)) / n):
        return None
    w = np.r_[0.5, np.ones(m - 1), 0.5] / m if m % 2 == 0 else np.ones(m) / m
    trend = np.convolve(v, w, mode="valid")
    off = (len(w) - 1) // 2
    detrended = v[off:off + len(trend)] - trend
    phase = (np.arange(len(detrended)) + off) % m
    idx = np.array([detrended[phase == p].mean() for p in range(m)])
    return idx - idx.mean()


def fit_scaler(values: np.ndarray, split: Split, kind: str, season: int, n_targets: int) -> Scaler:
    """A series' scaler, fit on the points its split's training may see. ``kind`` "auto" (tables): log
    where the series is positive and its logs show its season (seasonal swings that grow with the
    level; a trend is not made exponential where there is no season), else standard; the targets'
    seasonal indices removed where the series shows its season; in units of its mean absolute
    change. The other kinds as named."""
    part = values[:split.fit_end]
    if kind == "auto":
        positive = np.all(part > 0) and np.all(values > 0)
        seasonal = positive and seasonal_indices(np.log(part[:, 0]), season) is not None
        kind = "log" if seasonal else "standard"
        return Scaler.fit(part, kind, season, n_targets, unit="change")
    return Scaler.fit(part, kind)


# ---- windows and loaders -------------------------------------------------------------------------

def make_windows(series: np.ndarray, seq_length: int, horizon: int = 1, windows: range | None = None,
                 target_cols: tuple[int, ...] = (0,), known: int = -1, n_future: int = 0) -> TensorDataset:
    """Windows of a (scaled) series (N, F) as float32 tensors x (W, seq_length, F), y (W, horizon, T).

    Window i: x = series[i : i+seq_length], y = series[i+seq_length : i+seq_length+horizon, target_cols].
    ``known`` >= 0 (short windows): i may be negative (the inputs before the series repeat its first
    row) and targets may run past the series; targets at or after ``known`` are masked, and the
    dataset holds a third tensor, the mask (W, horizon, T) of 1 for a known target, else 0.
    ``n_future`` > 0 (short windows): the series' last n_future columns are known ahead, and x holds
    the horizon's rows after the window's, (W, seq_length + horizon, F), with those columns only
    (the others 0; rows past the series 0).
    """
    S, H = seq_length, horizon
    s = torch.as_tensor(np.ascontiguousarray(series), dtype=torch.float32)  # (N, F)
    if known < 0:
        W = num_windows(len(s), S, H)
        windows = range(W) if windows is None else windows
        if W < 1:
            raise DataError(f"a series of {len(s)} points is too short for seq_length={S}")
        all_x = s.unfold(0, S, 1).transpose(1, 2)  # (N-S+1, S, F)
        all_y = s[S:, list(target_cols)].unfold(0, H, 1).transpose(1, 2)  # (N-S-H+1, H, T)
        idx = slice(windows.start, windows.stop)
        return TensorDataset(all_x[idx].contiguous(), all_y[idx].contiguous())
    windows = range(1 - S, len(s) - S) if windows is None else windows
    T = len(target_cols)
    if len(windows) == 0:
        return TensorDataset(s.new_zeros(0, S + (H if n_future else 0), s.shape[1]), s.new_zeros(0, H, T),
                             s.new_zeros(0, H, T))
    lead = max(0, -windows.start)
    padded = torch.cat([s[:1].expand(lead, -1), s])  # (lead+N, F): window i starts at row i + lead
    end = windows.stop + lead + S + H - 1
    tail = max(0, end - len(padded))
    padded = torch.cat([padded, padded.new_zeros(tail, s.shape[1])])
    first, count = windows.start + lead, len(windows)
    x = padded.unfold(0, S, 1)[first:first + count].transpose(1, 2).contiguous()  # (W, S, F)
    y = padded[S:, list(target_cols)].unfold(0, H, 1)[first:first + count].transpose(1, 2).contiguous()  # (W, H, T)
    position = torch.arange(H) + torch.tensor(list(windows)).unsqueeze(1) + S  # (W, H) of each target
    mask = (position < min(known, len(s))).to(torch.float32).unsqueeze(2).expand_as(y).contiguous()
    if n_future:
        ahead = padded[S:].unfold(0, H, 1)[first:first + count].transpose(1, 2).clone()  # (W, H, F)
        ahead[..., :s.shape[1] - n_future] = 0
        x = torch.cat([x, ahead], dim=1)  # (W, S + H, F)
    return TensorDataset(x, y * mask, mask)


class Windows(NamedTuple):
    """The scaled windows of each part of every series' split (concatenated in series order), and each
    series' scaler (fit on its training part) and split."""

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    scalers: tuple
    splits: tuple

    @property
    def scaler(self) -> Scaler:
        """The first series' scaler (the only one of a single series)."""
        return self.scalers[0]

    @property
    def split(self) -> Split:
        return self.splits[0]


def _concat(parts: list[TensorDataset]) -> TensorDataset:
    if len(parts) == 1:
        return parts[0]
    return TensorDataset(*(torch.cat(ts) for ts in zip(*(p.tensors for p in parts))))


def split_windows(values: np.ndarray | Sequence[np.ndarray], split: Split | Sequence[Split],
                  scaler: Scaler | Sequence[Scaler] | str, n_targets: int = 1, season: int = 1,
                  n_future: int = 0) -> Windows:
    """Scalers (each fit on the points its series' training windows touch, or saved ones) -> the
    scaled windows of each part. values: one series (N, F) or a sequence of them, with their splits
    (and scalers); the first n_targets columns are the targets, the last n_future known ahead (see
    :func:`make_windows`)."""
    single = isinstance(values, np.ndarray)
    values = [values] if single else list(values)
    splits = [split] if isinstance(split, Split) else list(split)
    if isinstance(scaler, str):
        scalers = [fit_scaler(v, sp, scaler, season, n_targets) for v, sp in zip(values, splits)]
    else:
        scalers = [scaler] if isinstance(scaler, Scaler) else list(scaler)
    cols = tuple(range(n_targets))
    parts: dict[str, list] = {"train": [], "val": [], "test": []}
    for v, sp, sc in zip(values, splits, scalers):
        scaled = sc.transform(v)
        for name in parts:
            r = getattr(sp, name)
            known = -1 if sp.known < 0 else (sp.known if name == "train" else len(v))
            if len(r) or not parts[name]:
                parts[name].append(_windows_or_empty(scaled, sp, r, cols, known, n_future))
    return Windows(_concat(parts["train"]), _concat(parts["val"]), _concat(parts["test"]), tuple(scalers),
                   tuple(splits))


def window_places(splits: Sequence[Split], part: str) -> np.ndarray:
    """(W, 2) int64: for each window of a part, in the order split_windows concatenates them, its
    series' index and the grid position of its first target."""
    places = [np.stack([np.full(len(r), i), np.asarray(r) + sp.seq_length], axis=1)
              for i, sp in enumerate(splits) for r in [getattr(sp, part)]]
    return np.concatenate(places).astype(np.int64).reshape(-1, 2)


def _windows_or_empty(scaled: np.ndarray, sp: Split, r: range, cols: tuple, known: int,
                      n_future: int) -> TensorDataset:
    if len(r) == 0 and known < 0:  # (whole windows: no mask)
        return TensorDataset(torch.zeros(0, sp.seq_length, scaled.shape[1]), torch.zeros(0, sp.horizon, len(cols)))
    return make_windows(scaled, sp.seq_length, sp.horizon, r, cols, known, n_future)


def prepare(cfg: DataConfig, scaler: Scaler | None = None) -> Windows:
    """Series -> split -> scaler (fit on the training part, unless a saved one is given) -> windows."""
    panel = load_series(cfg)
    cfg = resolve_data(cfg, panel)
    splits = split_panel(panel, cfg)
    return split_windows([s.values for s in panel.series], splits, scaler or cfg.scaling, panel.n_targets,
                         cfg.season)


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
