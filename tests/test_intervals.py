"""Prediction intervals: split-conformal calibration and interval scores against their definitions."""

import numpy as np
import pandas as pd
import pytest
from helpers import bands, intervals_hold, rnnkit_cli

import rnnkit
from rnnkit.errors import ConfigError
from rnnkit.evaluate import mase_scale
from rnnkit.intervals import MIN_PER_STEP, MIN_WINDOWS, calibrate, interval_scores, parse_levels


def test_levels_parse_and_refuse_what_is_not_a_percentage():
    assert parse_levels("95, 80") == (80, 95) and parse_levels([99.5]) == (99.5,) and parse_levels("") == ()
    for bad in ("0", "100", "-5", "eighty"):
        with pytest.raises(ConfigError, match="level"):
            parse_levels(bad)


def test_the_conformal_rank_of_the_errors_of_enough_windows():
    errors = np.arange(1.0, MIN_WINDOWS + 1).reshape(MIN_WINDOWS, 1, 1)  # 1..40, one step
    cal = calibrate(errors, None, [80])
    # the step's own errors (at least MIN_PER_STEP): ranks ceil(41 * 0.1) = 5 and ceil(41 * 0.9) = 37
    assert (cal.lo[0, 0, 0], cal.hi[0, 0, 0]) == (5.0, 37.0)


def test_few_windows_take_students_t_around_the_pooled_errors():
    from scipy.stats import t

    rng = np.random.default_rng(0)
    H, n = 4, 10
    errors = rng.normal(0.5, 1, size=(n, H, 1)) * np.sqrt(np.arange(1, H + 1))[None, :, None]
    pooled = (errors / np.sqrt(np.arange(1, H + 1))[None, :, None]).ravel()
    cal = calibrate(errors, None, [80, 95])
    for k, q in enumerate((0.9, 0.975)):
        half = t.ppf(q, n - 1) * pooled.std(ddof=1) * np.sqrt(1 + 1 / n)
        np.testing.assert_allclose(cal.lo[k, :, 0], (pooled.mean() - half) * np.sqrt(np.arange(1, H + 1)))
        np.testing.assert_allclose(cal.hi[k, :, 0], (pooled.mean() + half) * np.sqrt(np.arange(1, H + 1)))
    known = np.ones_like(errors, dtype=bool)
    known[:, 2:] = False  # the later steps unseen: they grow by sqrt(h) all the same
    cal2 = calibrate(errors, known, [80])
    assert cal2.hi[0, 3, 0] / cal2.hi[0, 0, 0] == pytest.approx(2.0)
    one = calibrate(errors[:1], None, [95])  # one window: t with 2 degrees of freedom, not 0
    assert one.hi[0, 0, 0] - one.lo[0, 0, 0] == pytest.approx(2 * t.ppf(0.975, 2) * np.std(errors[0] / np.sqrt(
        np.arange(1, H + 1))[:, None], ddof=1) * np.sqrt(2))


def test_enough_windows_with_few_errors_per_step_pool_over_the_steps():
    rng = np.random.default_rng(0)
    H = 4
    errors = rng.normal(size=(MIN_WINDOWS, H, 1)) * np.sqrt(np.arange(1, H + 1))[None, :, None]
    with pytest.MonkeyPatch.context() as m:
        m.setattr("rnnkit.intervals.MIN_PER_STEP", MIN_WINDOWS + 1)
        cal = calibrate(errors, None, [80])
    np.testing.assert_allclose(cal.hi[0, :, 0] / cal.hi[0, 0, 0], np.sqrt(np.arange(1, H + 1)))


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


# ---- the forecaster's intervals ----------------------------------------------------------------

SMALL = dict(hidden_size=6, members=2, epochs=3)


def monthly(n=72, seed=0):
    t = np.arange(n)
    rng = np.random.default_rng(seed)
    y = 50 + 0.4 * t + 8 * np.sin(2 * np.pi * t / 12) + rng.normal(0, 2, n)
    return pd.DataFrame({"month": pd.period_range("2001-01", periods=n, freq="M").strftime("%Y-%m"), "y": y})


def held_out_errors(f, parts):
    """Truth - forecast of the test model on the windows of ``parts``, in units of the series' MASE scale."""
    w, split = f.windows(), f.splits()[0]
    scale = mase_scale(f.panel.series[0].values[:split.fit_end, :1], f.config.data.season)
    errors = [np.subtract(*f.window_predictions(w, part)) for part in parts]
    return np.concatenate(errors) / scale, scale


def test_the_forecasts_intervals_are_the_conformal_quantiles_of_the_held_out_errors():
    f = rnnkit.Forecaster(horizon=4, **SMALL).fit(monthly(), target="y", time_col="month", log=None)
    errors, scale = held_out_errors(f, ("val", "test"))  # the test model never trained on these
    want = calibrate(errors, None, (80, 95))
    fc = f.forecast()
    assert list(fc.columns) == ["month", "step", *bands("y")] and intervals_hold(fc, "y")
    for k, level in enumerate((80, 95)):
        np.testing.assert_allclose(fc[f"y_lo{level}"] - fc["y"], want.lo[k, :, 0] * scale, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(fc[f"y_hi{level}"] - fc["y"], want.hi[k, :, 0] * scale, rtol=1e-4, atol=1e-4)
    assert list(f.forecast(levels="50").columns) == ["month", "step", *bands("y", levels=(50,))]
    assert list(f.forecast(levels="").columns) == ["month", "step", "y"]


def test_test_scores_intervals_calibrated_on_the_validation_windows():
    f = rnnkit.Forecaster(horizon=4, **SMALL).fit(monthly(), target="y", time_col="month", log=None)
    m = f.evaluate(baselines=True)
    assert m["calibrated_on"] == "validation windows"
    errors, scale = held_out_errors(f, ("val",))
    cal = calibrate(errors, None, (80, 95))
    true, pred = f.predictions("test")
    lower, upper = cal.bounds(pred / scale)
    for k, level in enumerate((80, 95)):
        want = interval_scores(true / scale, lower[k], upper[k], level, np.ones(1))
        for key, value in want.items():
            assert m["intervals"][str(level)][key] == pytest.approx(value, rel=1e-4, abs=1e-4), (level, key)
        for name in ("naive", "seasonal_naive", "linear_ar"):
            assert 0 <= m["baselines"][name]["intervals"][str(level)]["coverage"] <= 100
    assert "intervals" not in f.evaluate(levels="")
    bt = f.backtest(folds=2, levels="90")
    assert set(bt["mean"]["intervals"]) == {"90"} and set(bt["mean"]["baselines"]["naive"]["intervals"]) == {"90"}


def test_intervals_cover_as_stated_on_a_panel_of_random_walks():
    """Held-out coverage on series the model never saw the end of: 40 random walks with drift."""
    rng = np.random.default_rng(3)
    rows = [(f"s{k}", 2000 + i, v) for k in range(40) for i, v in enumerate(100 + np.cumsum(rng.normal(0.3, 1, 60)))]
    df = pd.DataFrame(rows, columns=["id", "year", "y"])
    f = rnnkit.Forecaster(horizon=3, hidden_size=8, members=1).fit(df, target="y", time_col="year", id_col="id",
                                                                   log=None)
    m = f.evaluate()
    assert 70 <= m["intervals"]["80"]["coverage"] <= 90 and 88 <= m["intervals"]["95"]["coverage"] <= 99, m


def test_the_cli_writes_scores_and_draws_intervals(tmp_path):
    monthly().to_csv(tmp_path / "m.csv", index=False)
    rnnkit_cli("train", "--data", "m.csv", "--target", "y", "--time-col", "month", "--horizon", "3",
               "--hidden-size", "6", "--members", "2", "--epochs", "2", "--levels", "50,90", "--quiet", "--out", "r",
               cwd=tmp_path)
    out = rnnkit_cli("test", "--run", "r", cwd=tmp_path).stdout
    assert "prediction intervals (calibrated on the validation windows" in out and "cover % 50" in out
    assert "prediction intervals" not in rnnkit_cli("test", "--run", "r", "--levels", "", cwd=tmp_path).stdout
    rnnkit_cli("predict", "--run", "r", "--out", "fc.csv", "--plot", "fc.png", cwd=tmp_path)
    fc = pd.read_csv(tmp_path / "fc.csv")
    assert list(fc.columns) == ["month", "step", *bands("y", levels=(50, 90))] and intervals_hold(fc, "y", (50, 90))
    rnnkit_cli("predict", "--run", "r", "--out", "fc95.csv", "--levels", "95", cwd=tmp_path)
    assert list(pd.read_csv(tmp_path / "fc95.csv").columns) == ["month", "step", *bands("y", levels=(95,))]
    bt = rnnkit_cli("backtest", "--run", "r", "--folds", "2", "--refit", cwd=tmp_path).stdout
    assert "prediction intervals, mean over the folds" in bt
