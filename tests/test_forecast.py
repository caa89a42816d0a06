"""Real series: CSV input and its errors, multi-step windows without leakage, metrics and baselines
against hand-computed values, backtest, predict on a longer history, and the CLI end to end."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

import rnnkit
from helpers import bands, intervals_hold, rnnkit_cli
from rnnkit.csvdata import frame_series, read_csv
from rnnkit.data import Split, chronological_split, fold_split, split_windows
from rnnkit.errors import ConfigError, DataError
from rnnkit.evaluate import mase_scale, metrics, naive, ridge_fit, ridge_predict, seasonal_naive
from rnnkit.train import next_step_targets

FAST = dict(hidden_size=8, epochs=3, batch_size=16)


pytestmark = pytest.mark.usefixtures("single_thread")


def seasonal_series(n=120, seed=0):
    t = np.arange(n)
    rng = np.random.default_rng(seed)
    y = 100 + 0.5 * t + 10 * np.sin(2 * np.pi * t / 12) + rng.normal(0, 1, n)
    x = np.cos(2 * np.pi * t / 12) + rng.normal(0, 0.1, n)
    return pd.DataFrame({"month": pd.date_range("2000-01-01", periods=n, freq="MS").strftime("%Y-%m"),
                         "sales": y, "price": x, "note": ["a"] * n})


# ---- CSV reading -----------------------------------------------------------------------------------

def test_csv_columns_targets_first_and_monthly_season(tmp_path):
    df = seasonal_series(40)
    df.to_csv(tmp_path / "s.csv", index=False)
    s = read_csv(tmp_path / "s.csv", target="sales", features="price", time_col="month").series[0]
    assert s.columns == ("sales", "price") and s.n_targets == 1 and s.values.shape == (40, 2)
    np.testing.assert_allclose(s.values[:, 1], df["price"])
    assert s.time.step == "MS" and s.season == 12  # the unused text column "note" is ignored


def test_gaps_are_named_by_file_line_unless_filled(tmp_path):
    (tmp_path / "g.csv").write_text("t,y\n1,1.0\n2,\n3,3.0\n4,5.0\n5,\n")
    with pytest.raises(DataError, match=r"missing values in 'y' at lines 3, 6; .*fill='interpolate'"):
        read_csv(tmp_path / "g.csv", target="y")
    np.testing.assert_allclose(read_csv(tmp_path / "g.csv", "y", fill="interpolate").series[0].values[:, 0],
                               [1, 2, 3, 5, 5])
    np.testing.assert_allclose(read_csv(tmp_path / "g.csv", "y", fill="ffill").series[0].values[:, 0], [1, 1, 3, 5, 5])
    (tmp_path / "h.csv").write_text("t,y\n1,\n2,2\n")
    with pytest.raises(DataError, match="fill='ffill' cannot fill the first rows"):
        read_csv(tmp_path / "h.csv", "y", fill="ffill")


@pytest.mark.parametrize("text, kwargs, match", [
    ("y\n1\nabc\n3\n", {"target": "y"}, r"non-numeric cells at line 3 \(first: 'abc'\)"),
    ("y\n1\n2\n", {"target": "z"}, r"no column 'z'; its columns are: y"),
    ("t,y\n2000-02,1\n2000-01,2\n", {"target": "y", "time_col": "t"}, "does not increase at line 3"),
    ("t,y\nnot a date,1\n", {"target": "y", "time_col": "t"}, "not dates, quarters or numbers at line 2"),
    ("", {"target": "y"}, "is empty"),
])
def test_bad_csv_is_a_data_error(tmp_path, text, kwargs, match):
    (tmp_path / "b.csv").write_text(text)
    with pytest.raises(DataError, match=match):
        read_csv(tmp_path / "b.csv", **kwargs)


def test_too_short_series_for_seq_length_and_horizon():
    with pytest.raises(DataError, match="has 2 points; a series needs at least 3"):
        rnnkit.Forecaster(seq_length=10, horizon=8, **FAST).fit(np.arange(2.0), log=None)


# ---- windows, split, scaling -----------------------------------------------------------------------

def test_multi_step_split_never_shares_a_target_between_parts():
    sp = chronological_split(100, 10, horizon=5, train_ratio=0.8, val_ratio=0.2)
    targets = lambda r: set(range(r.start + 10, r.stop - 1 + 10 + 5)) if len(r) else set()  # noqa: E731
    assert not targets(sp.train) & targets(sp.val) and not targets(sp.val) & targets(sp.test)
    assert max(targets(sp.train)) == sp.fit_end - 1 < min(targets(sp.test))
    assert sp.test.stop == 100 - 10 - 5 + 1  # the last window ends at the last point
    # H = 1 is the seed's split exactly.
    assert chronological_split(1000, 50, 1, 0.8, 0.1) == Split(range(0, 684), range(684, 760), range(760, 950), 50, 1)


def test_scaler_sees_the_training_rows_only_and_log_round_trips():
    values = np.exp(np.linspace(0, 3, 60))[:, None]
    sp = fold_split(40, 60, seq_length=6, horizon=3)
    w = split_windows(values, sp, "log")
    np.testing.assert_allclose(w.scaler.mean, [np.log(values[:40]).mean()])  # points 0..39, not 40+
    assert sp.fit_end == 40
    x, y = w.test.tensors
    np.testing.assert_allclose(w.scaler.inverse(y[:1].double().numpy()), values[40:43].reshape(1, 3, 1), rtol=1e-5)
    with pytest.raises(DataError, match="positive"):
        split_windows(values - 5, sp, "log")


def test_every_step_targets_for_a_horizon():
    x = torch.arange(4.0).view(1, 4, 1)  # 0 1 2 3
    y = torch.tensor([[[4.0], [5.0]]])  # H = 2
    expected = torch.tensor([[[1.0, 2], [2, 3], [3, 4], [4, 5]]])  # step t predicts t+1, t+2
    torch.testing.assert_close(next_step_targets(x, y), expected)


# ---- metrics and baselines against hand-computed values --------------------------------------------

def test_metrics_by_hand():
    t = np.array([[[2.0]], [[4.0]]])
    p = np.array([[[3.0]], [[1.0]]])
    m = metrics(t, p, scale=np.array([2.0]))
    assert m["mse"] == pytest.approx((1 + 9) / 2) and m["mae"] == pytest.approx(2.0)
    assert m["smape"] == pytest.approx(100 * (2 * 1 / 5 + 2 * 3 / 5) / 2)
    assert m["mase"] == pytest.approx(2.0 / 2.0)
    train = np.array([[1.0], [3.0], [2.0], [6.0]])
    np.testing.assert_allclose(mase_scale(train, 1), [(2 + 1 + 4) / 3])
    np.testing.assert_allclose(mase_scale(train, 2), [(1 + 3) / 2])


def test_naive_and_seasonal_naive_by_hand():
    v = np.arange(10.0)[:, None] ** 2  # 0 1 4 9 16 25 36 49 64 81
    starts = np.array([5, 6])
    np.testing.assert_array_equal(naive(v, starts, 3)[:, :, 0], [[16, 16, 16], [25, 25, 25]])
    # season 2: step h of a window starting at s reads v[s + h - 2*(h//2 + 1)]
    np.testing.assert_array_equal(seasonal_naive(v, starts, 3, 2)[:, :, 0], [[9, 16, 9], [16, 25, 16]])


def test_ridge_recovers_a_linear_autoregression():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = x @ np.array([[1.0], [-2.0], [0.5]]) + 3.0
    w = ridge_fit(x, y, alpha=1e-9)
    np.testing.assert_allclose(w.ravel(), [1.0, -2.0, 0.5, 3.0], atol=1e-6)
    np.testing.assert_allclose(ridge_predict(w, x), y, atol=1e-6)


# ---- the API: direct, recursive, baselines, backtest, predict ---------------------------------------

@pytest.fixture(scope="module")
def monthly():
    df = seasonal_series(120)
    return rnnkit.Forecaster(horizon=4, **FAST).fit(df, target="sales", features="price", time_col="month",
                                                     log=None, progress=False), df


def test_direct_multivariate_report_on_the_same_windows(monthly):
    f, df = monthly
    assert f.config.data.seq_length == 24 and f.config.data.season == 12  # auto: 2 seasons
    r = f.evaluate(baselines=True)
    true, pred = f.predictions("test")
    assert pred.shape == true.shape == (r["windows"], 4, 1)
    np.testing.assert_allclose(true[-1, :, 0], df["sales"].to_numpy()[-4:], rtol=1e-5)
    sp = f.split()
    starts = np.asarray(sp.test) + 24
    scale = mase_scale(df[["sales"]].to_numpy()[:sp.fit_end], 12)
    snaive = seasonal_naive(df[["sales"]].to_numpy(), starts, 4, 12)
    assert r["baselines"]["seasonal_naive"]["mase"] == pytest.approx(
        np.abs(snaive - df["sales"].to_numpy()[starts[:, None] + np.arange(4)][..., None]).mean() / scale[0])
    assert r["mase"] == pytest.approx(np.abs(pred - true).mean() / scale[0], rel=1e-4)


def test_recursive_feeds_back_and_forecasts_any_horizon():
    y = seasonal_series(100)["sales"].to_numpy()
    f = rnnkit.Forecaster(horizon=3, strategy="recursive", seq_length=12, **FAST).fit(y, log=None, progress=False)
    assert all(m.head.out_features == 1 for m in f.model.members)  # one step, fed back
    window = y[-12:]
    p5 = f.predict(window, horizon=5)[0, :, 0]
    assert p5.shape == (5,)
    # Step 2 is step 1 of the window shifted by one with the first forecast appended.
    np.testing.assert_allclose(f.predict(np.append(window[1:], p5[0]), horizon=1)[0, 0, 0], p5[1], rtol=1e-5)
    with pytest.raises(ConfigError, match="every input must be a target"):
        rnnkit.Forecaster(strategy="recursive", **FAST).fit(seasonal_series(60), target="sales", features="price")


def test_direct_cannot_forecast_past_its_horizon(monthly):
    f, _ = monthly
    assert f.forecast(horizon=2).shape[0] == 2
    with pytest.raises(ConfigError, match="horizon <= 4"):
        f.forecast(horizon=5)


def test_forecast_on_a_longer_history_and_round_trip(monthly, tmp_path):
    f, df = monthly
    longer = pd.concat([df, seasonal_series(130, seed=1).iloc[120:]], ignore_index=True)
    longer["month"] = pd.date_range("2000-01-01", periods=130, freq="MS").strftime("%Y-%m")
    fc = f.forecast(longer)
    assert list(fc.columns) == ["month", "step", *bands("sales")] and fc["step"].tolist() == [1, 2, 3, 4]
    assert intervals_hold(fc, "sales")
    assert fc["month"].iloc[0] == "2010-11"  # the month after row 130, written as the input writes months
    window = longer[["sales", "price"]].to_numpy()[-24:]
    np.testing.assert_allclose(fc["sales"].to_numpy(), f.predict(window[None], at=130)[0, :, 0])
    f.save(tmp_path / "run")
    g = rnnkit.Forecaster.load(tmp_path / "run")
    pd.testing.assert_frame_equal(g.forecast(longer), fc)
    assert g.evaluate() == f.evaluate()


def test_backtest_rows_and_mean(monthly):
    f, _ = monthly
    bt = f.backtest(folds=2)
    assert [r["fold"] for r in bt["folds"]] == [1, 2]
    o1, o2 = (r["origin"] for r in bt["folds"])
    assert o2 - o1 == bt["fold_size"] and o2 + bt["fold_size"] == 120
    assert bt["mean"]["mase"] == pytest.approx(np.mean([r["mase"] for r in bt["folds"]]))
    with pytest.raises(ConfigError, match="use refit=True"):
        f.backtest(folds=20, fold_size=10)
    refit = f.backtest(folds=2, refit=True, fold_size=8)
    assert [r["origin"] for r in refit["folds"]] == [104, 112]
    assert all(r["train_points"] <= r["origin"] for r in refit["folds"])  # each fold trains before its origin


# ---- the CLI end to end --------------------------------------------------------------------------

def test_cli_multivariate_csv_train_test_backtest_predict(tmp_path):
    df = seasonal_series(90)
    df.loc[[30, 31], "price"] = np.nan  # a gap, filled
    df.to_csv(tmp_path / "s.csv", index=False)
    proc = rnnkit_cli("train", "--data", "s.csv", "--target", "sales", cwd=tmp_path, check=False)
    assert proc.returncode == 0  # no gap in the target: fine without --fill
    proc = rnnkit_cli("train", "--data", "s.csv", "--target", "sales", "--features", "price", "--quiet",
                      "--out", "r", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "lines 32, 33" in proc.stderr and proc.stderr.count("\n") == 1
    rnnkit_cli("train", "--data", "s.csv", "--target", "sales", "--features", "price", "--time-col", "month",
               "--fill", "interpolate", "--horizon", "3", "--hidden-size", "8", "--epochs", "2", "--quiet",
               "--out", "r", cwd=tmp_path)
    test = rnnkit_cli("test", "--run", "r", cwd=tmp_path)
    assert test.stdout.startswith("Test MSE Loss: ")
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["season"] == 12 and m["horizon"] == 3 and "seasonal naive" in test.stdout
    assert set(m["baselines"]) == {"naive", "seasonal_naive", "linear_ar"}
    bt = rnnkit_cli("backtest", "--run", "r", "--folds", "2", cwd=tmp_path)
    assert "mean" in bt.stdout and len(json.loads((tmp_path / "r" / "backtest.json").read_text())["folds"]) == 2
    df2 = seasonal_series(100, seed=2).drop(columns="note")
    df2.to_csv(tmp_path / "longer.csv", index=False)
    rnnkit_cli("predict", "--run", "r", "--data", "longer.csv", "--out", "fc.csv", "--plot", "fc.png", cwd=tmp_path)
    fc = pd.read_csv(tmp_path / "fc.csv")
    assert list(fc.columns) == ["month", "step", *bands("sales")] and fc["step"].tolist() == [1, 2, 3]
    assert intervals_hold(fc, "sales")
    assert fc["month"].iloc[0].startswith("2008-05")  # the month after the 100th row
    assert (tmp_path / "fc.png").stat().st_size > 10_000
    proc = rnnkit_cli("predict", "--run", "r", "--data", "longer.csv", "--horizon", "5", "--out", "x.csv",
                      cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "--horizon <= 3" in proc.stderr and not (tmp_path / "x.csv").exists()


def test_frame_series_of_an_array_names_its_columns():
    s = frame_series(np.arange(12.0).reshape(6, 2))
    assert s.columns == ("0", "1") and s.n_targets == 1
