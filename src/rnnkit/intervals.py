"""Prediction intervals from held-out errors (split conformal), and the scores of intervals.

A forecaster's errors on windows it never trained on say how far off its forecasts fall. For each
horizon step h, the quantiles (1 - L)/2 and (1 + L)/2 of those errors (truth - forecast) put around a
new forecast make an interval of level L %: as often as the held-out errors did, the truth falls
inside it. The errors are taken in a scale where the errors of different series pool (rnnkit's
scaled units: each series in units of its own mean absolute change); the bounds are then turned into
original units like the forecast (for a log-scaled series the interval is not symmetric there).

Where a horizon step has fewer than MIN_PER_STEP errors, the steps pool: each error is divided by
sqrt(h) (how a random walk's error grows) and the pooled quantiles multiplied back. Quantiles are
taken at the conformal rank ceil((n + 1) q) of n errors. Errors from fewer than MIN_WINDOWS windows
(a short series) are too few for that: a window's H errors move together, and the 95% rank would be
past the last error. Then the pooled errors' mean and standard deviation give a normal sample's
prediction interval, with Student's t quantile for the number of windows, which widens it as the
windows get fewer.

Scores, each over forecasts y (N, H, T) and intervals, scaled by each series' MASE scale like MASE:
coverage (the share of truths inside), MSIS (the M4 competition's interval score of level L:
(U - L) + 2/a (L - y)[y < L] + 2/a (y - U)[y > U], a = 1 - L/100) and the pinball loss of the bounds
read as the quantiles (1 -/+ L)/2.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .errors import ConfigError

LEVELS = (80, 95)
MIN_PER_STEP = 30
MIN_WINDOWS = 40  # the fewest windows whose errors have a conformal 95% interval (ceil((n+1) 0.975) <= n)


def parse_levels(text) -> tuple[int, ...]:
    """Levels in percent from "80,95" or a sequence; "" or None: none. Each strictly between 0 and
    100; a ConfigError names the bad one."""
    if text is None or text == "":
        return ()
    items = [t.strip() for t in text.split(",")] if isinstance(text, str) else list(text)
    out = []
    for item in items:
        try:
            level = float(item)
        except (TypeError, ValueError):
            raise ConfigError(f"a prediction interval level is a percentage such as 80 or 95, got {item!r}") from None
        if not 0 < level < 100:
            raise ConfigError(f"a prediction interval level must be between 0 and 100 (a percentage), got {item!r}")
        out.append(int(level) if level.is_integer() else level)
    return tuple(sorted(set(out)))


def level_name(level) -> str:
    """80 -> "80", 99.5 -> "99.5": the suffix of the ``_lo``/``_hi`` columns."""
    return f"{level:g}"


class Calibration(NamedTuple):
    """The offsets of each level's bounds from a forecast, per horizon step and target: lo, hi
    (levels, H, T), in the units of the errors they came from."""

    levels: tuple
    lo: np.ndarray
    hi: np.ndarray

    def bounds(self, forecast: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) bounds (levels, N, H, T) around forecasts (N, H, T) in the same units."""
        lo, hi = self.steps(forecast.shape[1])
        return forecast[None] + lo[:, None], forecast[None] + hi[:, None]

    def steps(self, horizon: int) -> tuple[np.ndarray, np.ndarray]:
        """The offsets (lo, hi) of the first ``horizon`` steps (levels, horizon, T); steps beyond the
        calibrated ones (a recursive forecast further than it was trained) widen the last step's as a
        random walk's error grows, by sqrt(h / H)."""
        H = self.lo.shape[1]
        if horizon <= H:
            return self.lo[:, :horizon], self.hi[:, :horizon]
        grow = np.sqrt(np.arange(H + 1, horizon + 1) / H)[None, :, None]
        return (np.concatenate([self.lo, self.lo[:, -1:] * grow], axis=1),
                np.concatenate([self.hi, self.hi[:, -1:] * grow], axis=1))


def _rank_quantile(values: np.ndarray, q: float) -> float:
    """The conformal quantile q of values: the value of rank ceil((n + 1) q), the last one past n
    (the first one below 1)."""
    v = np.sort(values)
    k = int(np.ceil((len(v) + 1) * q)) - 1
    return float(v[min(max(k, 0), len(v) - 1)])


def calibrate(errors: np.ndarray, known: np.ndarray | None, levels) -> Calibration:
    """The offsets for ``levels`` from held-out errors (N windows, H, T) (truth - forecast), ``known``
    (N, H, T) marking the errors that count (None: all). A step with no error at all takes the pooled
    ones; a target with errors from fewer than MIN_WINDOWS windows takes Student's t (see the module)."""
    levels = tuple(levels)
    N, H, T = errors.shape
    known = np.ones(errors.shape, dtype=bool) if known is None else known.astype(bool)
    lo = np.zeros((len(levels), H, T))
    hi = np.zeros((len(levels), H, T))
    root = np.sqrt(np.arange(1, H + 1))
    for t in range(T):
        pooled = np.concatenate([errors[known[:, h, t], h, t] / root[h] for h in range(H)])
        if len(pooled) == 0:
            raise ConfigError("there are no held-out errors to calibrate prediction intervals on")
        windows = int(known[:, :, t].any(axis=1).sum())
        for k, level in enumerate(levels):
            a = (1 - level / 100) / 2
            if windows < MIN_WINDOWS:
                low, high = _student(pooled, windows, a)
                lo[k, :, t], hi[k, :, t] = low * root, high * root
                continue
            for h in range(H):
                own = errors[known[:, h, t], h, t]
                if len(own) >= MIN_PER_STEP:
                    lo[k, h, t], hi[k, h, t] = _rank_quantile(own, a), _rank_quantile(own, 1 - a)
                else:
                    lo[k, h, t] = _rank_quantile(pooled, a) * root[h]
                    hi[k, h, t] = _rank_quantile(pooled, 1 - a) * root[h]
    return Calibration(levels, lo, hi)


def _student(errors: np.ndarray, windows: int, a: float) -> tuple[float, float]:
    """The bounds of a central interval of tail a (each side) for a new error, from errors of
    ``windows`` windows: their mean -/+ t(1 - a; windows - 1 degrees of freedom, at least 2) times
    their standard deviation times sqrt(1 + 1/windows) (a normal sample's prediction interval)."""
    from scipy.stats import t as student_t

    spread = float(np.std(errors, ddof=1)) if len(errors) > 1 else float(np.abs(errors[0]))
    half = float(student_t.ppf(1 - a, max(windows - 1, 2))) * spread * np.sqrt(1 + 1 / max(windows, 1))
    centre = float(np.mean(errors))
    return centre - half, centre + half

def interval_scores(true: np.ndarray, lower: np.ndarray, upper: np.ndarray, level, scale: np.ndarray) -> dict:
    """Coverage (%), MSIS and the scaled pinball loss of one level's intervals: true, lower, upper
    (N, H, T); scale (T,) each target's MASE scale."""
    a = 1 - level / 100
    below, above = true < lower, true > upper
    score = (upper - lower) + 2 / a * (lower - true) * below + 2 / a * (true - upper) * above
    q_lo, q_hi = a / 2, 1 - a / 2
    pinball = (_pinball(true, lower, q_lo) + _pinball(true, upper, q_hi)) / 2
    per_target = lambda x: x.reshape(-1, true.shape[-1]).mean(axis=0) / scale  # noqa: E731
    return {"coverage": float(100 * np.mean(~below & ~above)), "msis": float(np.mean(per_target(score))),
            "pinball": float(np.mean(per_target(pinball)))}


def _pinball(true: np.ndarray, quantile: np.ndarray, q: float) -> np.ndarray:
    diff = true - quantile
    return np.maximum(q * diff, (q - 1) * diff)
