"""The details a new user meets around a forecast (issue #25, item 3): errors in the words of the
interface used (flags on the command line, arguments in Python)."""

import numpy as np
import pandas as pd
import pytest

import rnnkit
from rnnkit.cli import as_arguments
from rnnkit.errors import ConfigError, DataError, RunError, on_the_command_line


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
    assert "drop features or use strategy='direct'" in str(e.value) and "--" not in str(e.value)
    assert "drop --features or use --strategy direct" in e.value.cli_message
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
