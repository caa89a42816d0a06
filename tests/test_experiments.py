"""The experiments: the adding-problem data against its definition, tiny end-to-end runs of each
experiment, the gradient probe against the analytic last-step gradient, and the user errors."""

import argparse
import json

import numpy as np
import pytest
import torch

from rnnkit.errors import ConfigError
from rnnkit.experiments import add_arguments, run
from rnnkit.experiments.adding import BASELINE_MSE, AddingModel, adding_data, run_adding, held_out_set
from rnnkit.experiments.compare import run_compare, table
from rnnkit.experiments.gradients import hidden_grad_norms, run_gradients

from helpers import png_is_not_blank, rnnkit_cli


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


@pytest.mark.parametrize("T", [2, 3, 100, 201])
def test_adding_data_markers_and_targets(T):
    x, y = adding_data(500, T, torch.Generator().manual_seed(0))
    assert x.shape == (500, T, 2) and y.shape == (500, 1) and x.dtype == torch.float32
    values, markers = x[..., 0], x[..., 1]
    assert ((values >= 0) & (values < 1)).all()
    assert set(markers.unique().tolist()) <= {0.0, 1.0}
    half = T // 2
    assert (markers[:, :half].sum(1) == 1).all() and (markers[:, half:].sum(1) == 1).all()
    for b in range(0, 500, 37):  # the target is exactly the sum of the two marked values
        first, second = markers[b].nonzero().flatten().tolist()
        assert first < half <= second
        assert y[b, 0].item() == (values[b, first] + values[b, second]).item()


def test_adding_baseline_is_one_sixth():
    _, y = adding_data(200_000, 10, torch.Generator().manual_seed(1))
    # Var(U1 + U2) = 1/6; the estimate's standard error here is ~5e-4
    assert ((y - 1) ** 2).mean().item() == pytest.approx(BASELINE_MSE, abs=3e-3)
    assert y.mean().item() == pytest.approx(1.0, abs=3e-3)


def test_held_out_set_is_fixed_and_apart_from_training():
    x1, _ = held_out_set(20, 50)
    x2, _ = held_out_set(20, 50)
    assert torch.equal(x1, x2)
    x_train, _ = adding_data(50, 20, torch.Generator().manual_seed(0))
    assert not torch.equal(x1, x_train)


def test_adding_run_writes_results(tmp_path):
    out = tmp_path / "lstm"
    code = run(parse("adding", "--cell", "lstm", "--T", 12, "--steps", 30, "--hidden-size", 8,
                     "--batch-size", 16, "--test-size", 64, "--evals", 3, "--quiet", "--out", out))
    assert code == 0
    r = json.loads((out / "results.json").read_text())
    assert {"test_mse", "baseline_mse", "test_baseline_mse", "first_step_below_0.01", "wall_time_s",
            "train_time_s", "curve"} <= set(r)
    assert (r["cell"], r["T"], r["steps"], r["hidden_size"]) == ("lstm", 12, 30, 8)
    c = r["curve"]
    assert c["step"] == [0, 10, 20, 30] and len(c["test_mse"]) == len(c["train_mse"]) == 4
    assert c["train_mse"][0] is None and all(np.isfinite(c["train_mse"][1:]))
    assert r["test_mse"] == c["test_mse"][-1] and np.isfinite(r["test_mse"])
    # the learning curve's last point is the model's MSE on the held-out set
    torch.manual_seed(0)
    again = run_adding("lstm", 12, 30, 8, 16, test_size=64, evals=3, progress=False)
    assert again["test_mse"] == pytest.approx(r["test_mse"], rel=1e-6)
    assert png_is_not_blank(out / "learning_curve.png")
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_adding_learns_short_sequences():
    """An oracle that training works at all: at T=4 a GRU beats the constant-1 baseline clearly."""
    torch.set_num_threads(1)
    r = run_adding("gru", T=4, steps=300, hidden_size=16, batch_size=32, lr=1e-2, test_size=500, evals=1,
                   progress=False)
    assert r["test_mse"] < 0.3 * r["test_baseline_mse"]


def test_hidden_grad_norms_match_the_analytic_last_step():
    torch.manual_seed(0)
    model = AddingModel("gru", 6)
    x, y = adding_data(5, 9, torch.Generator().manual_seed(2))
    norms = hidden_grad_norms(model, x, y)
    assert norms.shape == (9,) and np.isfinite(norms).all() and (norms > 0).all()
    # L_b = (w·h_T + b - y_b)^2, so dL_b/dh_T = 2 (pred_b - y_b) w
    m = model.double()
    with torch.no_grad():
        pred = m(x.double())
    expected = (2 * (pred - y.double()).abs() * m.head.weight.norm()).mean().item()
    assert norms[-1] == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_hidden_grad_norms_match_the_layer_restarted_at_t(cell):
    """dL/dh_t is the gradient of the loss w.r.t. the initial state of the layer (its default engine)
    run from h_t over the remaining steps."""
    torch.manual_seed(1)
    model = AddingModel(cell, 7).double()
    x, y = adding_data(4, 12, torch.Generator().manual_seed(3))
    x, y = x.double(), y.double()
    norms = hidden_grad_norms(model, x, y)
    for t in (0, 5, 10):  # 0-based: h_t after input t
        with torch.no_grad():
            h_t = model.rnn(x[:, :t + 1])[0][:, -1]  # (B, H)
        h0 = h_t.unsqueeze(0).clone().requires_grad_()  # (1, B, H)
        out, _ = model.rnn(x[:, t + 1:], h0)
        loss = ((model.head(out[:, -1]) - y) ** 2).sum()
        (g,) = torch.autograd.grad(loss, h0)
        assert norms[t] == pytest.approx(g[0].norm(dim=1).mean().item(), rel=1e-9)


def test_gradients_experiment(tmp_path):
    out = tmp_path / "grad"
    r = run_gradients(["rnn", "lstm", "gru"], T=15, steps=5, hidden_size=8, probe_size=10, out=out,
                      progress=False)
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["cells"]) == {"rnn", "lstm", "gru"}
    for cell, c in saved["cells"].items():
        for when in ("init", "trained"):
            assert len(c[when]) == 15 and np.isfinite(c[when]).all() and min(c[when]) > 0, (cell, when)
        assert c["ratio_init"] == pytest.approx(c["init"][0] / c["init"][-1])
    assert r["cells"]["rnn"]["init"] == saved["cells"]["rnn"]["init"]
    assert png_is_not_blank(out / "gradient_flow.png")


def test_compare_on_tiny_epochs(tmp_path, capsys):
    code = run(parse("compare", "--cells", "rnn,gru", "--epochs", 2, "--hidden-size", 8, "--num-samples", 200,
                     "--quiet", "--out", tmp_path))
    assert code == 0
    printed = capsys.readouterr().out
    r = json.loads((tmp_path / "compare.json").read_text())
    assert [row["cell"] for row in r["rows"]] == ["rnn", "gru"]
    for row in r["rows"]:
        assert np.isfinite(row["test_mse"]) and row["test_mse"] > 0 and row["epochs"] <= 2
        assert row["train_time_s"] > 0
    assert table(r) in printed and "RNN" in printed and "GRU" in printed


@pytest.mark.parametrize("call, message", [
    (lambda: run_adding("transformer", T=10, steps=1), "unknown cell 'transformer'"),
    (lambda: run_adding("rnn", T=1, steps=1), "T must be an integer >= 2"),
    (lambda: run_adding("rnn", T=10, steps=0), "steps must be an integer >= 1"),
    (lambda: run_adding("rnn", T=10, steps=-3), "steps must be an integer >= 1"),
    (lambda: run_adding("rnn", T=10, steps=1, lr=0), "lr must be a positive number"),
    (lambda: run_gradients(["rnn", "elman"], T=10, steps=1), "unknown cell 'elman'"),
    (lambda: run_gradients([], T=10, steps=1), "cells needs at least one cell"),
    (lambda: run_compare(["gru", "lstmm"]), "unknown cell 'lstmm'"),
])
def test_user_errors(call, message, tmp_path):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        call()


def test_experiment_through_the_cli(tmp_path):
    """`rnnkit experiment adding` end to end in a subprocess; a bad value is one error line, exit 2."""
    rnnkit_cli("experiment", "adding", "--cell", "gru", "--T", 8, "--steps", 10, "--hidden-size", 4,
               "--batch-size", 8, "--test-size", 16, "--evals", 1, "--quiet", "--out", "a", cwd=tmp_path)
    r = json.loads((tmp_path / "a" / "results.json").read_text())
    assert (r["cell"], r["T"], r["steps"]) == ("gru", 8, 10) and np.isfinite(r["test_mse"])
    bad = rnnkit_cli("experiment", "adding", "--cell", "gru", "--T", 1, "--out", "b", cwd=tmp_path, check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1
    assert not (tmp_path / "b").exists()
