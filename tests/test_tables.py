"""Real tables as users bring them: every form of time column read and continued in its own form,
missing and ambiguous times, short series, the refit on every point, panels in the long format (one
model, per-series scaling, long results, their bad inputs), and resume across the two trainings."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import rnnkit
from helpers import bands, intervals_hold, png_is_not_blank, rnnkit_cli
from rnnkit.csvdata import frame_panel, read_csv
from rnnkit.errors import DataError
from rnnkit.runs import TEST_WEIGHTS, WEIGHTS

FAST = dict(hidden_size=6, members=2, epochs=3)

pytestmark = pytest.mark.usefixtures("single_thread")


# ---- time columns --------------------------------------------------------------------------------

TIME_FORMS = [  # (column as written, kind, step, season, the next three times as they are written)
    (["1821", "1822", "1823"], "number", "1", 1, ["1824", "1825", "1826"]),
    (["1821.0", "1822.0", "1823.0"], "number", "1", 1, ["1824.0", "1825.0", "1826.0"]),
    (["0.5", "1.0", "1.5"], "number", "0.5", 1, ["2.0", "2.5", "3.0"]),
    (["1959Q1", "1959Q2", "1959Q3"], "period", "Q-DEC", 4, ["1959Q4", "1960Q1", "1960Q2"]),
    (["1959-Q4", "1960-Q1", "1960-Q2"], "period", "Q-DEC", 4, ["1960-Q3", "1960-Q4", "1961-Q1"]),
    (["Q3 1965", "Q4 1965", "Q1 1966"], "period", "Q-DEC", 4, ["Q2 1966", "Q3 1966", "Q4 1966"]),
    (["2000-11", "2000-12", "2001-01"], "date", "MS", 12, ["2001-02", "2001-03", "2001-04"]),
    (["Nov 1980", "Dec 1980", "Jan 1981"], "date", "MS", 12, ["Feb 1981", "Mar 1981", "Apr 1981"]),
    (["2000-01-31", "2000-02-29", "2000-03-31"], "date", "ME", 12, ["2000-04-30", "2000-05-31", "2000-06-30"]),
    (["1990-12-31", "1991-12-31", "1992-12-31"], "date", "YE-DEC", 1, ["1993-12-31", "1994-12-31", "1995-12-31"]),
    (["2000-01-02", "2000-01-09", "2000-01-16"], "date", "W-SUN", 52, ["2000-01-23", "2000-01-30", "2000-02-06"]),
    (["2000-02-27", "2000-02-28", "2000-02-29"], "date", "D", 7, ["2000-03-01", "2000-03-02", "2000-03-03"]),
    (["13/02/2000", "14/02/2000", "15/02/2000"], "date", "D", 7, ["16/02/2000", "17/02/2000", "18/02/2000"]),
    (["20000227", "20000228", "20000229"], "date", "D", 7, ["20000301", "20000302", "20000303"]),
    (["2000-01-06", "2000-01-07", "2000-01-10"], "date", "B", 5, ["2000-01-11", "2000-01-12", "2000-01-13"]),
    (["2000-01-01 23:00", "2000-01-02 00:00", "2000-01-02 01:00"], "date", "h", 24,
     ["2000-01-02 02:00", "2000-01-02 03:00", "2000-01-02 04:00"]),
    (["2000-01-01 23:00:00", "2000-01-01 23:30:00", "2000-01-02 00:00:00"], "date", "30min", 48,
     ["2000-01-02 00:30:00", "2000-01-02 01:00:00", "2000-01-02 01:30:00"]),
]


@pytest.mark.parametrize("times, kind, step, season, future", TIME_FORMS, ids=[f[0][0] for f in TIME_FORMS])
def test_a_time_column_is_read_and_continued_in_its_own_form(tmp_path, times, kind, step, season, future):
    (tmp_path / "s.csv").write_text("t,y\n" + "".join(f"{t},{k}\n" for k, t in enumerate(times)))
    s = read_csv(tmp_path / "s.csv", target="y", time_col="t").series[0]
    assert (s.time.kind, s.time.step, s.season) == (kind, step, season)
    assert s.time.text() == times  # kept as they came
    assert s.time.text(3, 6) == future


def test_dataframe_times_keep_their_types():
    frame = pd.DataFrame({"y": [1.0, 2.0, 3.0]}, index=pd.date_range("2000-01-01", periods=3, freq="h"))
    s = frame_panel(frame, "y").series[0]  # a DatetimeIndex is the time column
    assert list(s.time.future(1)) == [pd.Timestamp("2000-01-01 03:00")]
    series = pd.Series([1.0, 2.0, 3.0], name="sales", index=pd.period_range("1999Q4", periods=3, freq="Q"))
    s = frame_panel(series).series[0]  # a Series' name is its target
    assert s.columns == ("sales",) and list(s.time.future(1)) == [pd.Period("2000Q3", "Q-DEC")]
    s = frame_panel(pd.DataFrame({"year": [1900, 1901, 1902], "y": [1.0, 2, 3]}), "y", time_col="year").series[0]
    assert s.time.future(2).tolist() == [1903, 1904]


def test_missing_times_are_named_or_filled(tmp_path):
    (tmp_path / "m.csv").write_text("month,y\n2001-01,1\n2001-02,2\n2001-05,5\n2001-06,6\n")
    with pytest.raises(DataError, match=r"misses 2 times of its monthly grid: 2001-03, 2001-04; .*fill='interpolate'"):
        read_csv(tmp_path / "m.csv", target="y", time_col="month")
    s = read_csv(tmp_path / "m.csv", target="y", time_col="month", fill="interpolate").series[0]
    np.testing.assert_allclose(s.values[:, 0], [1, 2, 3, 4, 5, 6])
    assert s.time.text() == ["2001-01", "2001-02", "2001-03", "2001-04", "2001-05", "2001-06"]


@pytest.mark.parametrize("text, match", [
    ("t,y\n01/02/2000,1\n01/03/2000,2\n01/04/2000,3\n", r"reads both as '%d/%m/%Y' and as '%m/%d/%Y'"),
    ("t,y\n2000-01-01,1\n2000-01-01,2\n", "repeats a time at line 3"),
    ("t,y\n2000-01-02,1\n2000-01-01,2\n", "does not increase at line 3"),
    ("t,y\n1,1\n2,2\n2.7,3\n", "not on a regular grid"),
    ("t,y\nsoon,1\nlater,2\n", "not dates, quarters or numbers at lines 2, 3"),
])
def test_bad_time_columns_say_what_is_wrong(tmp_path, text, match):
    (tmp_path / "b.csv").write_text(text)
    with pytest.raises(DataError, match=match):
        read_csv(tmp_path / "b.csv", target="y", time_col="t")


def test_a_date_format_settles_day_first(tmp_path):
    (tmp_path / "d.csv").write_text("t,y\n01/02/2000,1\n01/03/2000,2\n01/04/2000,3\n")
    s = read_csv(tmp_path / "d.csv", target="y", time_col="t", date_format="%d/%m/%Y").series[0]
    assert s.time.step == "MS" and s.time.text(3, 4) == ["01/05/2000"]
    s = read_csv(tmp_path / "d.csv", target="y", time_col="t", date_format="%m/%d/%Y").series[0]
    assert s.time.step == "D" and s.time.text(3, 4) == ["01/05/2000"]


# ---- short series and the refit -----------------------------------------------------------------

def monthly(n, seed=0, start="2001-01"):
    t = np.arange(n)
    rng = np.random.default_rng(seed)
    y = 50 + 0.4 * t + 8 * np.sin(2 * np.pi * t / 12) + rng.normal(0, 1, n)
    return pd.DataFrame({"month": pd.period_range(start, periods=n, freq="M").strftime("%Y-%m"), "y": y})


@pytest.mark.parametrize("n, horizon", [(36, 6), (20, 18), (12, 6), (3, 2)])
def test_every_series_a_seasonal_naive_can_forecast_gets_a_forecast(n, horizon):
    notes = []
    f = rnnkit.Forecaster(horizon=horizon, **FAST).fit(monthly(n), target="y", time_col="month", log=notes.append)
    fc = f.forecast()
    assert len(fc) == horizon and np.all(np.isfinite(fc["y"]))
    assert fc["month"].iloc[0] == pd.Period(monthly(n)["month"].iloc[-1], "M").__add__(1).strftime("%Y-%m")
    if n < 30:
        assert any("too short to hold out validation windows" in line for line in notes)


def test_the_forecasting_model_saw_every_point_and_the_test_model_did_not(tmp_path):
    df = monthly(60)
    f = rnnkit.Forecaster(horizon=3, **FAST).fit(df, target="y", time_col="month", log=None, run_dir=tmp_path / "r")
    assert f.model is not f.test_model and f.history["refit"]["epoch"]
    origin = f.split().origin
    assert origin == 60 - 12  # the last 20% of 60 points test
    scaled_test = f.test_scalers[0]
    scaled_all = f.scalers[0]
    # Each scaler is fit on the points its model trains on: the test model's before the origin only.
    assert not np.isclose(scaled_test.std[0], scaled_all.std[0])
    again = rnnkit.data.fit_scaler(df[["y"]].to_numpy(), f.split(), "auto", 12, 1)
    np.testing.assert_allclose(again.std, scaled_test.std)
    # evaluate scores the test model; the forecast comes from the refit model, on the final scalers.
    true, pred = f.predictions("test")
    assert f.evaluate()["mae"] == pytest.approx(np.abs(true - pred).mean())
    window = df[["y"]].to_numpy()[-f.config.data.seq_length:]
    np.testing.assert_allclose(f.forecast()["y"], f.predict(window[None])[0, :, 0])
    assert (tmp_path / "r" / WEIGHTS).exists() and (tmp_path / "r" / TEST_WEIGHTS).exists()
    g = rnnkit.Forecaster.load(tmp_path / "r")
    pd.testing.assert_frame_equal(g.forecast(), f.forecast())
    assert g.evaluate() == f.evaluate()


def test_a_run_exports_its_forecasting_model_to_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    monthly(48).to_csv(tmp_path / "m.csv", index=False)
    rnnkit_cli("train", "--data", "m.csv", "--target", "y", "--time-col", "month", "--horizon", "3",
               "--hidden-size", "6", "--members", "3", "--epochs", "2", "--quiet", "--out", "r", cwd=tmp_path)
    proc = rnnkit_cli("export", "--run", "r", "--out", "m.onnx", cwd=tmp_path)
    assert "wrote m.onnx" in proc.stdout and proc.stderr == ""
    import onnx

    graph = onnx.load(str(tmp_path / "m.onnx"))
    assert sum(n.op_type == "GRU" for n in graph.graph.node) == 3  # each member's recurrence, as ONNX's GRU
    props = {p.key: p.value for p in graph.metadata_props}
    f = rnnkit.Forecaster.load(tmp_path / "r")
    assert json.loads(props["rnnkit.scalers"]) == [s.to_dict() for s in f.scalers]
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = f.windows().train.tensors[0]  # scaled windows, as the model reads them
    for batch, length in ((1, x.shape[1]), (7, x.shape[1]), (5, x.shape[1] + 4)):
        xs = x[:batch] if length == x.shape[1] else torch.cat([x[:batch, :4], x[:batch]], dim=1)
        (y,) = session.run(None, {"x": xs.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(y, f.model.eval()(xs).numpy(), atol=1e-4, rtol=1e-4)


class Crash(Exception):
    pass


@pytest.mark.parametrize("phase", ["test", "final"])
def test_a_table_run_resumes_bitwise_in_either_training(tmp_path, phase):
    df = monthly(40)
    settings = dict(horizon=2, hidden_size=4, members=2, epochs=4, log_every=1, val_ratio=0.0)  # 4 epochs each
    fit = dict(target="y", time_col="month", progress=False)
    rnnkit.Forecaster(**settings).fit(df, log=None, run_dir=tmp_path / "a", **fit)
    seen = []

    def crash(line):  # dies in epoch 3 of the chosen training, before its checkpoint
        seen.append(line)
        refitting = any(s.startswith("refit on all") for s in seen)
        if line.startswith("Epoch 3/") and refitting == (phase == "final"):
            raise Crash

    with pytest.raises(Crash):
        rnnkit.Forecaster(**settings).fit(df, log=crash, run_dir=tmp_path / "b", **fit)
    assert not (tmp_path / "b" / WEIGHTS).exists()
    rnnkit.Forecaster.resume(tmp_path / "b", log=None, progress=False)
    for name in (WEIGHTS, TEST_WEIGHTS):
        a, b = load_file(tmp_path / "a" / name), load_file(tmp_path / "b" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- panels -------------------------------------------------------------------------------------

def panel(lengths=(30, 22, 40), seed=0):
    """A long table whose rows are sorted by time, then id (an id's rows are not contiguous)."""
    rng = np.random.default_rng(seed)
    rows = []
    for k, n in enumerate(lengths):
        level = 10 * (k + 1) ** 2
        y = level + np.cumsum(rng.normal(0.5, 1, n))
        rows += [(f"id{k}", 1990 + (40 - n) + i, v) for i, v in enumerate(y)]
    return pd.DataFrame(rows, columns=["series", "year", "y"]).sort_values(["year", "series"], kind="stable")


def test_a_panel_trains_one_model_and_forecasts_every_series():
    df = panel()
    f = rnnkit.Forecaster(horizon=4, **FAST).fit(df, target="y", time_col="year", id_col="series", log=None)
    assert f.panel.ids == ("id2", "id0", "id1") and len(f.scalers) == 3  # in the order they first appear
    assert f.scalers[0].mean[0] > f.scalers[1].mean[0]  # each series scaled on its own (log levels)
    fc = f.forecast()
    assert list(fc.columns) == ["series", "year", "step", *bands("y")] and len(fc) == 12
    assert intervals_hold(fc, "y")
    assert fc.groupby("series")["year"].first().to_dict() == {"id0": 2030, "id1": 2030, "id2": 2030}
    r = f.evaluate(baselines=True)
    assert [s["id"] for s in r["series"]] == ["id2", "id0", "id1"]
    assert r["mase"] == pytest.approx(np.mean([s["mase"] for s in r["series"]]))
    assert set(r["baselines"]) == {"naive", "seasonal_naive", "linear_ar"}
    # A history of some of the ids forecasts those; one the run never saw is refused.
    notes = []
    part = f.forecast(df[df["series"] != "id1"], log=notes.append)
    pd.testing.assert_frame_equal(part.reset_index(drop=True),
                                  fc[fc["series"] != "id1"].reset_index(drop=True))
    assert "2 of the run's 3 ids" in notes[0]
    with pytest.raises(DataError, match="ids 'new' are not in the run"):
        f.forecast(pd.concat([df, df[df["series"] == "id0"].assign(series="new")]))


def test_a_panel_from_the_cli(tmp_path):
    df = panel()
    df.to_csv(tmp_path / "p.csv", index=False)
    flags = ["--hidden-size", "6", "--members", "2", "--epochs", "3", "--quiet"]
    rnnkit_cli("train", "--data", "p.csv", "--target", "y", "--time-col", "year", "--id-col", "series",
               "--horizon", "3", *flags, "--out", "r", cwd=tmp_path)
    test = rnnkit_cli("test", "--run", "r", cwd=tmp_path)
    assert "over 3 series" in test.stdout
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert len(m["series"]) == 3 and m["horizon"] == 3
    proc = rnnkit_cli("predict", "--run", "r", "--out", "fc.csv", "--plot", "fc.png", cwd=tmp_path)
    assert "each of the 3 series" in proc.stdout
    fc = pd.read_csv(tmp_path / "fc.csv")
    assert list(fc.columns) == ["series", "year", "step", *bands("y")] and fc["year"].tolist() == [2030, 2031, 2032] * 3
    assert intervals_hold(fc, "y")
    assert png_is_not_blank(tmp_path / "fc.png")
    series = pd.read_csv(tmp_path / "r" / "series.csv")  # the run's copy, long, times as they came
    assert list(series.columns) == ["series", "year", "y"] and series["year"].dtype == np.int64
    bt = rnnkit_cli("backtest", "--run", "r", "--folds", "1", cwd=tmp_path)
    assert "mean" in bt.stdout
    df[df["series"] == "id2"].assign(series="other").to_csv(tmp_path / "other.csv", index=False)
    proc = rnnkit_cli("predict", "--run", "r", "--data", "other.csv", "--out", "x.csv", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "ids 'other' are not in the run" in proc.stderr
    assert not (tmp_path / "x.csv").exists()


def test_a_panel_trains_under_ddp(tmp_path):
    panel().to_csv(tmp_path / "p.csv", index=False)
    args = ["train", "--data", "p.csv", "--target", "y", "--time-col", "year", "--id-col", "series",
            "--horizon", "3", "--hidden-size", "4", "--members", "2", "--epochs", "2", "--batch-size", "16",
            "--quiet"]
    rnnkit_cli(*args, "--nproc", "2", "--out", "two", cwd=tmp_path, timeout=600)
    rnnkit_cli(*args, "--out", "one", cwd=tmp_path)
    for name in (WEIGHTS, TEST_WEIGHTS):  # the same global batches: one process's weights, up to rounding
        a, b = load_file(tmp_path / "one" / name), load_file(tmp_path / "two" / name)
        assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
