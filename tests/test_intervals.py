"""Prediction intervals: split-conformal calibration and interval scores against their definitions."""

import numpy as np
import pytest

from rnnkit.errors import ConfigError
from rnnkit.intervals import MIN_PER_STEP, calibrate, interval_scores, parse_levels


def test_levels_parse_and_refuse_what_is_not_a_percentage():
    assert parse_levels("95, 80") == (80, 95) and parse_levels([99.5]) == (99.5,) and parse_levels("") == ()
    for bad in ("0", "100", "-5", "eighty"):
        with pytest.raises(ConfigError, match="level"):
            parse_levels(bad)


def test_the_conformal_rank_of_a_few_errors():
    errors = np.arange(1.0, 10.0).reshape(9, 1, 1)  # 1..9, one step
    cal = calibrate(errors, None, [80])
    # the pooled path (fewer than MIN_PER_STEP errors), h = 1: ranks ceil(10 * 0.1) = 1 and ceil(10 * 0.9) = 9
    assert (cal.lo[0, 0, 0], cal.hi[0, 0, 0]) == (1.0, 9.0)


def test_few_errors_pool_over_the_steps_as_a_random_walk_grows():
    rng = np.random.default_rng(0)
    H = 4
    errors = rng.normal(size=(10, H, 1)) * np.sqrt(np.arange(1, H + 1))[None, :, None]
    cal = calibrate(errors, None, [80])
    np.testing.assert_allclose(cal.hi[0, :, 0] / cal.hi[0, 0, 0], np.sqrt(np.arange(1, H + 1)))
    known = np.ones_like(errors, dtype=bool)
    known[:, 2:] = False  # the later steps unseen: they take the pooled quantile, grown by sqrt(h)
    cal2 = calibrate(errors, known, [80])
    assert cal2.hi[0, 3, 0] / cal2.hi[0, 0, 0] == pytest.approx(2.0)


def test_many_errors_give_each_step_its_own_quantiles_and_the_stated_coverage():
    rng = np.random.default_rng(1)
    n = max(4000, MIN_PER_STEP)
    scale = np.array([1.0, 3.0])[None, :, None]  # step 2's errors three times wider (not sqrt(2))
    cal = calibrate(rng.normal(size=(n, 2, 1)) * scale, None, [80, 95])
    np.testing.assert_allclose(cal.hi[:, :, 0], [[1.2816, 3 * 1.2816], [1.96, 3 * 1.96]], rtol=0.06)
    fresh = rng.normal(size=(n, 2, 1)) * scale
    lower, upper = cal.bounds(np.zeros_like(fresh))
    inside = ((fresh >= lower) & (fresh <= upper)).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(inside, [0.80, 0.95], atol=0.02)


def test_interval_scores_by_hand():
    true = np.array([[[0.0], [5.0], [-3.0]]])  # one window, three steps
    lower = np.full_like(true, -1.0)
    upper = np.full_like(true, 1.0)
    s = interval_scores(true, lower, upper, 80, scale=np.array([2.0]))
    a = 0.2
    msis = np.mean([2.0, 2.0 + 2 / a * 4.0, 2.0 + 2 / a * 2.0]) / 2.0
    assert s["coverage"] == pytest.approx(100 / 3) and s["msis"] == pytest.approx(msis)
    pin = lambda y, q, tau: max(tau * (y - q), (tau - 1) * (y - q))  # noqa: E731
    expected = np.mean([(pin(y, -1, 0.1) + pin(y, 1, 0.9)) / 2 for y in (0.0, 5.0, -3.0)]) / 2.0
    assert s["pinball"] == pytest.approx(expected)
