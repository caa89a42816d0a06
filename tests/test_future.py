"""Features known ahead (--future-features, --calendar): the windows hold the horizon's rows of those
columns, the model reads them, and `predict --future FILE` supplies them, for one series and a panel."""

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import rnnkit_cli

import rnnkit
from rnnkit.csvdata import frame_panel
from rnnkit.data import make_windows
from rnnkit.errors import ConfigError, DataError

SMALL = dict(hidden_size=8, members=1)


def promotions(n=150, seed=0, start="2020-01-01"):
    """Daily sales that jump by 30 on promotion days (a fifth of them, at random) and swing weekly."""
    rng = np.random.default_rng(seed)
    promo = (rng.random(n) < 0.2).astype(float)
    y = 100 + 10 * np.sin(2 * np.pi * np.arange(n) / 7) + 30 * promo + rng.normal(0, 2, n)
    return pd.DataFrame({"day": pd.date_range(start, periods=n, freq="D").strftime("%Y-%m-%d"), "sales": y,
                         "promo": promo})


def test_windows_hold_the_horizons_known_ahead_rows_and_nothing_else():
    series = np.arange(40.0).reshape(20, 2) + 1  # column 0 the target, column 1 known ahead
    ds = make_windows(series, 4, 3, range(-1, 12), (0,), known=20, n_future=1)
    x, y, mask = ds.tensors
    assert x.shape == (13, 4 + 3, 2)
    for k, i in enumerate(range(-1, 12)):
        rows = [max(r, 0) for r in range(i, i + 4)]  # the first row repeats before the series' start
        assert torch.equal(x[k, :4], torch.as_tensor(series[rows], dtype=torch.float32))
        assert torch.equal(x[k, 4:, 0], torch.zeros(3))  # the target's future is not an input
        assert torch.equal(x[k, 4:, 1], torch.as_tensor(series[i + 4:i + 7, 1], dtype=torch.float32))
        assert torch.equal(y[k, :, 0], torch.as_tensor(series[i + 4:i + 7, 0], dtype=torch.float32))


def test_the_calendar_follows_the_grid():
    daily = frame_panel(promotions(20), "sales", time_col="day", calendar=True).series[0]
    assert daily.columns == ("sales", "dow_sin", "dow_cos", "year_sin", "year_cos") and daily.n_future == 4
    monday = 5  # 2020-01-06
    assert daily.values[monday, 1] == pytest.approx(0.0, abs=1e-12) and daily.values[monday, 2] == pytest.approx(1)
    assert daily.values[monday + 7, 1:3] == pytest.approx(daily.values[monday, 1:3])
    hourly = pd.DataFrame({"t": pd.date_range("2021-03-01", periods=30, freq="h").astype(str), "y": range(30)})
    assert frame_panel(hourly, "y", time_col="t", calendar=True).columns[1:3] == ("hour_sin", "hour_cos")
    monthly = pd.DataFrame({"m": pd.period_range("2001-01", periods=14, freq="M").astype(str), "y": range(14)})
    s = frame_panel(monthly, "y", time_col="m", calendar=True).series[0]
    assert s.columns == ("y", "year_sin", "year_cos") and s.values[12, 1:] == pytest.approx(s.values[0, 1:])
    for table, why in [(pd.DataFrame({"year": range(1990, 2000), "y": range(10)}), "numbers"),
                       (pd.DataFrame({"t": [f"{y}-01-01" for y in range(1990, 2000)], "y": range(10)}), "finer than")]:
        with pytest.raises(DataError, match=why):
            frame_panel(table, "y", time_col=table.columns[0], calendar=True)


def test_known_ahead_promotions_are_read_and_help(tmp_path):
    df = promotions()
    history, future = df.iloc[:140], df.iloc[140:].drop(columns="sales")
    plain = rnnkit.Forecaster(horizon=10, features="promo", **SMALL).fit(history, target="sales", time_col="day",
                                                                         log=None)
    ahead = rnnkit.Forecaster(horizon=10, future_features="promo", **SMALL).fit(history, target="sales",
                                                                                time_col="day", log=None)
    assert ahead.evaluate()["mase"] < 0.8 * plain.evaluate()["mase"]
    fc = ahead.forecast(future=future)
    err = np.abs(fc["sales"].to_numpy() - df["sales"].to_numpy()[140:]).mean()
    assert err < 0.6 * np.abs(plain.forecast()["sales"].to_numpy() - df["sales"].to_numpy()[140:]).mean()
    on, off = future.assign(promo=1.0), future.assign(promo=0.0)
    assert (ahead.forecast(future=on)["sales"] - ahead.forecast(future=off)["sales"]).mean() > 15  # the jump is 30
    with pytest.raises(DataError, match="give their values at the 10 steps"):
        ahead.forecast()
    with pytest.raises(ConfigError, match="forecast"):
        ahead.predict(np.zeros((1, ahead.config.data.seq_length, 2)))
    pytest.importorskip("onnxruntime")
    ahead.export(tmp_path / "m.onnx")  # checked against PyTorch with the horizon's rows after the window


def test_a_run_with_the_calendar_saves_loads_and_forecasts_alike(tmp_path):
    df = promotions(120)
    f = rnnkit.Forecaster(horizon=7, calendar=True, **SMALL).fit(df[["day", "sales"]], target="sales",
                                                                 time_col="day", log=None)
    f.save(tmp_path / "run")
    assert pd.read_csv(tmp_path / "run" / "series.csv").columns.tolist() == ["day", "sales"]  # made again
    g = rnnkit.Forecaster.load(tmp_path / "run")
    pd.testing.assert_frame_equal(f.forecast(), g.forecast())
    assert g.forecast()["day"].tolist()[0] == "2020-04-30"
    with pytest.raises(ConfigError, match="no future features .future_features.; drop future"):
        g.forecast(future=df)


def test_the_cli_with_a_panel_reads_each_ids_future_rows(tmp_path):
    frames = [promotions(90, seed=k).assign(store=f"s{k}") for k in range(3)]
    table = pd.concat(frames, ignore_index=True)
    table[table["day"] < "2020-03-23"].to_csv(tmp_path / "hist.csv", index=False)  # 82 days each
    later = table[table["day"] >= "2020-03-23"].drop(columns="sales")
    later.to_csv(tmp_path / "future.csv", index=False)
    rnnkit_cli("train", "--data", "hist.csv", "--id-col", "store", "--time-col", "day", "--target", "sales",
               "--future-features", "promo", "--calendar", "yes", "--horizon", "5", "--hidden-size", "6",
               "--members", "1", "--epochs", "3", "--quiet", "--out", "r", cwd=tmp_path)
    rnnkit_cli("predict", "--run", "r", "--future", "future.csv", "--out", "fc.csv", cwd=tmp_path)
    fc = pd.read_csv(tmp_path / "fc.csv")
    assert len(fc) == 15 and fc.groupby("store")["day"].first().tolist() == ["2020-03-23"] * 3
    later[later["store"] != "s1"].to_csv(tmp_path / "two.csv", index=False)
    proc = rnnkit_cli("predict", "--run", "r", "--future", "two.csv", "--out", "fc.csv", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr == "error: two.csv has no rows for store s1; it needs the 5 steps " \
                                                  "after the history\n"
    proc = rnnkit_cli("predict", "--run", "r", "--out", "fc.csv", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "--future FILE.csv" in proc.stderr
    proc = rnnkit_cli("train", "--data", "hist.csv", "--id-col", "store", "--time-col", "day", "--target", "sales",
                      "--calendar", "yes", "--model", "custom", "--members", "1", "--relative", "no", "--out", "c", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "--model custom reads no features known ahead" in proc.stderr
