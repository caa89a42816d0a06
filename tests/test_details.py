"""The details a new user meets around a forecast (issue #25, item 3): the forecast file's precision,
plots with dates and names, metrics per target in one number format, errors in the words of the
interface used (flags on the command line, arguments in Python), every config key a flag,
`--version`, `--seq-length 0`, `--sep`, and `train --resume DIR --epochs N` training a run further."""

import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import rnnkit
from helpers import bands, intervals_hold, png_is_not_blank, rnnkit_cli
from rnnkit import visualize
from rnnkit.cli import TRAIN_FLAGS, _yes_no, as_arguments, build_parser, forecast_csv, number, table
from rnnkit.config import FIELD_SECTION, DataConfig, RunConfig
from rnnkit.csvdata import frame_panel
from rnnkit.errors import ConfigError, DataError, RunError, on_the_command_line
from rnnkit.forecaster import extend
from rnnkit.runs import CHECKPOINT, METRICS, REFIT_CHECKPOINT, TEST_WEIGHTS, WEIGHTS
from rnnkit.train import extend as extend_checkpoint

pytestmark = pytest.mark.usefixtures("single_thread")

WAVE = dict(num_samples=160, seq_length=12, hidden_size=8, batch_size=16, log_every=1)
TABLE = dict(horizon=2, hidden_size=4, members=1, log_every=1)


def two_targets(n=48, seed=0):
    """A monthly table with two targets of very different scales."""
    t = np.arange(n)
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"month": pd.period_range("2001-01", periods=n, freq="M").strftime("%Y-%m"),
                         "sales": 5000 + 40 * t + 600 * np.sin(2 * np.pi * t / 12) + rng.normal(0, 50, n),
                         "rate": 0.03 + 0.002 * np.cos(2 * np.pi * t / 12) + rng.normal(0, 1e-4, n)})


# ---- errors in the words of the interface ----------------------------------------------------------

@pytest.mark.parametrize("cli, api", [
    ("pass --fill interpolate or --fill ffill", "pass fill='interpolate' or fill='ffill'"),
    ("ask for --horizon <= 4, or train with --horizon 8 or --strategy recursive",
     "ask for horizon <= 4, or train with horizon=8 or strategy='recursive'"),
    ("pass --sep ';' (or the separator it uses)", "pass sep=';' (or the separator it uses)"),
    ("name the target column(s) (--target COL[,COL])", "name the target column(s) (target=COL[,COL])"),
    ("drop --num-layers/--dropout or use --relative yes", "drop num_layers/dropout or use relative=True"),
    ("use --refit, fewer --folds or a smaller --fold-size", "use refit=True, fewer folds or a smaller fold_size"),
    ("a CSV series needs its file (--data PATH.csv)", "a CSV series needs its file (data=PATH.csv)"),
    ("lower --lr, now 0.01, or clip gradients, e.g. --clip-grad-norm 1", "lower lr, now 0.01, or clip gradients, "
                                                                         "e.g. clip_grad_norm=1"),
    ("retrain with `rnnkit train --out runs/a --force`", "retrain with `rnnkit train --out runs/a --force`"),
    ("--bogus 3 is not a flag of rnnkit", "--bogus 3 is not a flag of rnnkit"),
])
def test_flags_read_as_arguments_in_python(cli, api):
    assert as_arguments(cli) == api


def test_python_errors_name_arguments_and_the_cli_names_flags():
    with pytest.raises(ConfigError) as e:
        rnnkit.Forecaster(horizon=0)
    assert (str(e.value), e.value.cli_message) == ("horizon must be >= 1, got 0", "data.horizon must be >= 1, got 0")
    df = two_targets()
    with pytest.raises(ConfigError) as e:
        rnnkit.Forecaster(strategy="recursive").fit(df, target="sales", features="rate", log=None)
    assert "drop features, future_features and calendar, or use strategy='direct'" in str(e.value) and "--" not in str(e.value)
    assert "drop --features, --future-features and --calendar, or use --strategy direct" in e.value.cli_message
    with pytest.raises(DataError) as e:
        rnnkit.Forecaster().fit(df.assign(sales=df["sales"].where(df.index % 7 > 0)), target="sales", log=None)
    assert "pass fill='interpolate' or fill='ffill'" in str(e.value)
    assert "pass --fill interpolate or --fill ffill" in e.value.cli_message


def test_while_the_cli_runs_errors_read_as_written_and_so_do_the_errors_they_quote():
    inner = ConfigError("use --fill ffill")
    with on_the_command_line():
        assert str(inner) == "use --fill ffill"
        outer = RunError(f"the run is broken ({inner}); retrain with --force")
        assert str(outer) == "the run is broken (use --fill ffill); retrain with --force"
    assert str(inner) == "use fill='ffill'" and str(outer) == "the run is broken (use fill='ffill'); retrain with force=True"


# ---- one number format -----------------------------------------------------------------------------

@pytest.mark.parametrize("value, text", [
    (0.023389, "0.02339"), (0.001013, "0.001013"), (0.202, "0.2020"), (17.77, "17.77"), (503.44, "503.4"),
    (999.96, "1000"), (1520.4, "1520"), (2312000.0, "2312000"), (1.04e-07, "1.040e-07"), (-0.5, "-0.5000"),
    (0.0, "0"), (float("nan"), "nan"),
])
def test_one_number_format_whatever_the_magnitude(value, text):
    assert number(value) == text


def test_a_printed_number_keeps_four_significant_digits_without_a_power_of_ten_above_1e_4():
    rng = np.random.default_rng(0)
    for v in 10.0 ** rng.uniform(-9, 9, 2000) * rng.choice([-1.0, 1.0], 2000):
        text = number(float(v))
        assert float(text) == pytest.approx(v, rel=5.001e-4), text
        assert ("e" in text) == (abs(float(f"{v:.4g}")) < 1e-4), text


def test_tables_align_every_column():
    text = table(["", "MSE", "MASE"], [["model", 0.001013, 0.5], ["seasonal naive", 10471.2, 1e-7]])
    assert text.splitlines() == ["                     MSE       MASE",
                                 "model           0.001013     0.5000",
                                 "seasonal naive     10471  1.000e-07"]


# ---- forecast.csv ----------------------------------------------------------------------------------

def test_the_forecast_file_writes_each_series_to_six_significant_digits_of_its_scale():
    fc = pd.DataFrame({"id": ["a"] * 3 + ["b"] * 3, "month": ["1961-01", "1961-02", "1961-03"] * 2,
                       "step": [1, 2, 3] * 2,
                       "y": [445.6770620386414, 439.0026894920084, 622.0, 0.0123456789, -1e-9, np.nan]})
    rows = pd.read_csv(io.StringIO(forecast_csv(fc, "id")), dtype=str, keep_default_na=False)
    assert rows["y"].tolist() == ["445.677", "439.003", "622.000", "0.0123457", "0.0000000", ""]
    assert rows[["id", "month", "step"]].equals(fc[["id", "month", "step"]].astype(str))
    one = pd.read_csv(io.StringIO(forecast_csv(fc.drop(columns="id"))), dtype=str)
    assert one["y"].iloc[3] == "0.012"  # one series: the scale of its largest value, 622
    big = pd.read_csv(io.StringIO(forecast_csv(fc.assign(y=fc["y"] * 5000))), dtype=str)
    assert big["y"].iloc[:3].tolist() == ["2228385", "2195013", "3110000"]  # whole numbers, no 2.228e+06


# ---- metrics per target ----------------------------------------------------------------------------

def test_metrics_per_target_add_up_to_the_pooled_ones():
    f = rnnkit.Forecaster(epochs=2, **TABLE).fit(two_targets(), target="sales,rate", time_col="month", log=None,
                                                 progress=False)
    m = f.evaluate(baselines=True)
    for row in [m, *m["baselines"].values()]:
        per = row["targets"]
        assert list(per) == ["sales", "rate"]
        for key in ("mse", "mae", "smape", "mase"):  # one series, the same forecasts per target: means
            assert row[key] == pytest.approx(np.mean([per[t][key] for t in per]), rel=1e-12)
        assert all(per[t]["rmse"] == pytest.approx(math.sqrt(per[t]["mse"])) for t in per)


# ---- plots -----------------------------------------------------------------------------------------

@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions draw, instead of their files."""
    kept = []
    monkeypatch.setattr(visualize, "_save", lambda fig, path: kept.append(fig) or Path(path))
    return kept


def test_predictions_plot_dates_names_steps_and_which_series(figures):
    days = pd.date_range("2020-01-01", periods=60, freq="D").strftime("%Y-%m-%d")
    panel = frame_panel(pd.concat([pd.DataFrame({"store": f"s{k}", "day": days, "sales": np.arange(60.0) + 100 * k,
                                                 "rate": np.arange(60.0) / 1000}) for k in range(5)]),
                        "sales,rate", "", "day", id_col="store")
    starts = np.arange(40, 50)
    places = np.concatenate([np.stack([np.full(10, i), starts], axis=1) for i in range(5)])  # (50, 2)
    pred = np.random.default_rng(0).normal(size=(50, 4, 2))  # (W, H, T)
    data = DataConfig(source="csv", target="sales,rate", time_col="day", id_col="store")
    visualize.plot_predictions(pred, places, panel, "p.png", data)
    (fig,) = figures
    axes = fig.axes
    assert len(axes) == 3 * 2 and "the first 3 of 5 series" in fig._suptitle.get_text()
    assert [ax.get_title() for ax in axes[:2]] == ["sales, store s0", "rate, store s0"]
    assert [(ax.get_xlabel(), ax.get_ylabel()) for ax in axes[:2]] == [("day", "sales"), ("day", "rate")]
    true, one, four = axes[3].get_lines()  # rate of store s1
    assert [line.get_label() for line in (true, one, four)] == ["true", "forecast 1 step ahead",
                                                                "forecast 4 steps ahead"]
    days = pd.DatetimeIndex(true.get_xdata())
    assert days[0] == pd.Timestamp("2020-02-10") and len(days) == 10 + 3  # the first target to the last
    np.testing.assert_array_equal(pd.DatetimeIndex(four.get_xdata()), days[3:])
    np.testing.assert_array_equal(four.get_ydata(), pred[10:20, 3, 1])
    np.testing.assert_array_equal(true.get_ydata(), panel.series[1].values[40:53, 1])


def test_the_forecast_plot_shows_enough_history_to_read_the_forecast(figures):
    n = 4000
    df = pd.DataFrame({"t": pd.date_range("2020-01-01", periods=n, freq="h"), "y": np.sin(np.arange(n) / 3.8)})
    panel = frame_panel(df, "y", "", "t")
    data = DataConfig(source="csv", target="y", time_col="t", horizon=24, season=24, seq_length=48)
    fc = pd.DataFrame({"t": panel.series[0].time.future(24), "step": np.arange(1, 25), "y": np.zeros(24)})
    visualize.plot_forecast(panel, fc, "f.png", data)
    history, forecast = figures[0].axes[0].get_lines()
    assert len(history.get_xdata()) == 4 * 24 and history.get_label() == "history (last 96 points)"
    assert len(forecast.get_xdata()) == 1 + 24


# ---- the command line ------------------------------------------------------------------------------

def test_every_config_key_is_a_flag_of_its_type():
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    by_dest = {a.dest: a for a in train._actions}
    flags = {dest for _, dest, _, _ in TRAIN_FLAGS}
    assert set(FIELD_SECTION) - flags == {"csv"}  # --data PATH.csv sets the source and the file
    defaults = RunConfig()
    for name, section in FIELD_SECTION.items():
        if name != "csv":
            kind = type(getattr(getattr(defaults, section), name))
            assert by_dest[name].type is (_yes_no if kind is bool else kind), name


def test_version(tmp_path):
    proc = rnnkit_cli("--version", cwd=tmp_path)
    assert re.fullmatch(rf"rnnkit {re.escape(rnnkit.__version__)} \(torch \S+, Python \d+\.\d+\.\d+\)\n", proc.stdout)


def test_a_two_target_csv_with_semicolons_end_to_end(tmp_path):
    """train (--sep ';', --seq-length 0 = automatic) --test --visualize, then predict: per-target metrics
    in the table and metrics.json, every table number in one format, dated plots, a readable forecast."""
    df = two_targets()
    df.to_csv(tmp_path / "two.csv", sep=";", index=False)
    settings = ["--target", "sales,rate", "--time-col", "month", "--horizon", "2", "--hidden-size", "4",
                "--members", "1", "--epochs", "2"]
    run = rnnkit_cli("train", "--data", "two.csv", "--sep", ";", "--seq-length", "0", *settings, "--quiet",
                     "--test", "--visualize", "--out", "run", cwd=tmp_path)
    lines = run.stdout.splitlines()
    assert re.fullmatch(r"Test MSE Loss: \d+\.\d{6}", lines[1]), run.stdout  # after the "Trained ..." line
    assert {"all 2 targets:", "sales:", "rate:"} <= set(lines)
    points = lines[:next(k for k, line in enumerate(lines) if line.startswith("prediction intervals"))]
    cells = [c for line in points if line.startswith(("model ", "naive ", "seasonal naive ", "linear AR "))
             for c in line.split()[-5:]]
    assert len(cells) == 3 * 4 * 5 and all(number(float(c)) == c for c in cells)
    intervals = [c for line in lines[len(points):] if line.startswith(("model ", "naive ", "seasonal naive "))
                 for c in line.split()[-6:]]
    assert len(intervals) == 3 * 6 and all(number(float(c)) == c for c in intervals)
    metrics = json.loads((tmp_path / "run" / METRICS).read_text())
    assert set(metrics["targets"]) == {"sales", "rate"} and set(metrics["baselines"]["naive"]["targets"]) == {"sales",
                                                                                                             "rate"}
    config = json.loads((tmp_path / "run" / "config.json").read_text())["config"]["data"]
    api = rnnkit.Forecaster(horizon=2, hidden_size=4, members=1, epochs=1).fit(df, target="sales,rate",
                                                                                 time_col="month", log=None)
    assert config["seq_length"] == api.config.data.seq_length > 0  # 0 is the automatic length
    assert png_is_not_blank(tmp_path / "run" / "predictions_vs_true.png")

    out = rnnkit_cli("predict", "--run", "run", "--out", "fc.csv", cwd=tmp_path)
    assert out.stdout == "wrote fc.csv (2 steps after row 48 of the run's series)\n"
    text = (tmp_path / "fc.csv").read_text().splitlines()
    assert text[0].split(",") == ["month", "step", *bands("sales", "rate")]
    assert text[1].startswith("2005-01,1,")
    for row in text[1:]:
        for value in row.split(",")[2:]:
            assert "e" not in value and len(value.replace("-", "").replace(".", "").lstrip("0")) <= 6, row


# ---- train --resume DIR --epochs N -----------------------------------------------------------------

def assert_same_weights(a, b):
    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("kind", ["wave", "table"])
def test_training_a_finished_run_further_is_the_longer_run(tmp_path, kind):
    """With a constant learning rate and no early stopping, 3 epochs then --epochs 5 are bitwise the run
    of 5 epochs: the test model, and a table's model that forecasts, refit for the epochs validation
    chose in all 5."""
    if kind == "wave":
        make = lambda epochs: rnnkit.Forecaster(**WAVE, epochs=epochs, schedule="none", patience=0)  # noqa: E731
        fit = dict(log=None, progress=False)
    else:
        make = lambda epochs: rnnkit.Forecaster(**TABLE, epochs=epochs, schedule="none")  # noqa: E731
        fit = dict(data=two_targets(40), target="sales", time_col="month", log=None, progress=False)
    make(3).fit(run_dir=tmp_path / "a", **fit)
    (tmp_path / "a" / METRICS).write_text("{}")  # the old model's: removed, it no longer describes the run
    resumed = rnnkit.Forecaster.resume(tmp_path / "a", log=None, progress=False, epochs=5)
    whole = make(5).fit(run_dir=tmp_path / "b", **fit)
    assert resumed.history["train_loss"] == whole.history["train_loss"] and len(whole.history["epoch"]) == 5
    assert resumed.config == whole.config and not (tmp_path / "a" / METRICS).exists()
    assert_same_weights(tmp_path / "a" / WEIGHTS, tmp_path / "b" / WEIGHTS)
    if kind == "table":
        assert resumed.history["refit"]["train_loss"] == whole.history["refit"]["train_loss"]
        assert_same_weights(tmp_path / "a" / TEST_WEIGHTS, tmp_path / "b" / TEST_WEIGHTS)
        assert (tmp_path / "a" / REFIT_CHECKPOINT).exists()  # and checkpoint.safetensors is the test model's
        (tmp_path / "a" / CHECKPOINT).write_bytes((tmp_path / "a" / REFIT_CHECKPOINT).read_bytes())
        with pytest.raises(RunError, match="checkpoint is its refit's"):
            extend(tmp_path / "a", 8)
    assert extend(tmp_path / "b", 5) is None  # nothing to do: it trains until epoch 5
    with pytest.raises(ConfigError, match="has trained 5 epochs; give epochs above 5"):
        extend(tmp_path / "b", 4)


def test_a_cosine_schedule_is_aimed_at_the_new_last_epoch(tmp_path):
    rnnkit.Forecaster(**WAVE, epochs=3).fit(log=None, progress=False, run_dir=tmp_path)
    f = rnnkit.Forecaster.resume(tmp_path, log=None, progress=False, epochs=6)
    cosine = lambda e, n: 0.01 * (1 + math.cos(math.pi * (e - 1) / n)) / 2  # noqa: E731  (the rate epoch e uses)
    assert f.history["lr"] == pytest.approx([cosine(e, 3) for e in (1, 2, 3)] + [cosine(e, 6) for e in (4, 5, 6)])


def test_extending_clears_early_stopping_and_leaves_the_checkpoint_given():
    state = {"loop": {"epoch": 5, "best": 0.1, "bad": 3}, "history": {"stopped_early": True},
             "scheduler": {"T_max": 5, "eta_min": 0.0, "base_lrs": [0.01], "_last_lr": [0.0]},
             "optimizer": {"param_groups": [{"lr": 0.0}]}}
    before = json.dumps(state)
    _, new = extend_checkpoint(({}, state), 10, "cosine")
    assert (new["loop"]["bad"], new["history"]["stopped_early"], new["scheduler"]["T_max"]) == (0, False, 10)
    assert new["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.005) and json.dumps(state) == before
    plateau = dict(state, scheduler={"mode": "min"})
    assert extend_checkpoint(({}, plateau), 10, "plateau")[1]["scheduler"] == {"mode": "min"}


def test_train_resume_epochs_from_the_command_line(tmp_path):
    rnnkit.Forecaster(**WAVE, epochs=2).fit(log=None, progress=False, run_dir=tmp_path / "run")
    proc = rnnkit_cli("train", "--resume", "run", "--epochs", "4", "--quiet", cwd=tmp_path)
    assert proc.stdout.splitlines()[0] == "run: training on from epoch 2 until epoch 4"
    assert proc.stdout.splitlines()[1].startswith("Trained 4 epochs")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["train"]["epochs"] == 4
    again = rnnkit_cli("train", "--resume", "run", "--epochs", "4", cwd=tmp_path)
    assert "nothing to resume" in again.stdout
