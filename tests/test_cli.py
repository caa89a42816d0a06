"""End-to-end: the `rnnkit` command in a subprocess (python -m rnnkit), in a temp dir."""

import json
import math
import re

import numpy as np
import pytest

from helpers import png_is_not_blank, rnnkit_cli

TINY = ["--num-samples", "160", "--seq-length", "12", "--hidden-size", "8", "--batch-size", "16"]


def test_train_test_visualize(tmp_path):
    out = tmp_path / "run"
    train = rnnkit_cli("train", *TINY, "--epochs", "2", "--log-every", "1", "--out", out, cwd=tmp_path)
    assert re.search(r"^Epoch 2/2, Loss: \d+\.\d{6}, Time: \d+\.\d{2}s, Val Loss: \d+\.\d{6}$", train.stdout, re.M)
    assert {"model.safetensors", "config.json", "history.json"} <= {p.name for p in out.iterdir()}
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["model"]["hidden_size"] == 8 and config["rnnkit_version"]

    test = rnnkit_cli("test", "--run", out, cwd=tmp_path)
    mse = float(re.search(r"^Test MSE Loss: (\d+\.\d{6})$", test.stdout, re.M).group(1))
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"mse", "mae", "rmse", "smape", "mase"} <= set(metrics)  # the model's, at the top level
    assert set(metrics["baselines"]) == {"naive", "seasonal_naive", "linear_ar"}
    assert metrics["mse"] == pytest.approx(mse, abs=1e-6) and metrics["rmse"] == pytest.approx(math.sqrt(metrics["mse"]))
    assert "Test MAE:" in test.stdout and "Test RMSE:" in test.stdout

    vis = rnnkit_cli("visualize", "--run", out, cwd=tmp_path, check=True)
    for name in ("predictions_vs_true.png", "loss_curve.png"):
        assert png_is_not_blank(out / name), name
    assert "wrote" in vis.stdout
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left

    # make run's one-process form gives the same test numbers and plots as the three commands
    again = tmp_path / "again"
    one = rnnkit_cli("train", *TINY, "--epochs", "2", "--test", "--visualize", "--quiet", "--out", again,
                     cwd=tmp_path)
    assert f"Test MSE Loss: {mse:.6f}" in one.stdout
    assert json.loads((again / "metrics.json").read_text()) == metrics
    for name in ("predictions_vs_true.png", "loss_curve.png"):
        assert png_is_not_blank(again / name), name


def test_seed_preset(tmp_path):
    out = tmp_path / "seed"
    rnnkit_cli("train", "--preset", "seed", "--epochs", "2", "--out", out, cwd=tmp_path)
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert cfg["model"]["model"] == "custom" and cfg["model"]["hidden_size"] == 32
    assert cfg["data"]["scaling"] == "none" and cfg["data"]["val_ratio"] == 0.0
    assert cfg["train"]["lr"] == 0.01 and cfg["train"]["loss_steps"] == "last" and cfg["train"]["epochs"] == 2
    from safetensors.numpy import load_file

    weights = load_file(out / "model.safetensors")
    assert {k: v.shape for k, v in weights.items()} == {
        "W_ih": (1, 32), "W_hh": (32, 32), "W_ho": (32, 1), "bias_h": (32,), "bias_o": (1,)}
    test = rnnkit_cli("test", "--run", out, cwd=tmp_path)
    assert np.isfinite(json.loads((out / "metrics.json").read_text())["mse"]) and "Test MSE Loss:" in test.stdout


def test_config_file_and_flags(tmp_path):
    (tmp_path / "c.toml").write_text('[model]\ncell = "rnn"\nhidden_size = 6\n[train]\nepochs = 9\n')
    rnnkit_cli("train", "--config", "c.toml", *TINY[:4], "--epochs", "1", "--quiet", "--out", "r", cwd=tmp_path)
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())["config"]
    assert (cfg["model"]["cell"], cfg["model"]["hidden_size"], cfg["train"]["epochs"]) == ("rnn", 6, 1)


@pytest.mark.parametrize("args, match", [
    (["test", "--run", "missing"], "run directory missing does not exist"),
    (["train", "--config", "nope.toml"], "config file nope.toml does not exist"),
    (["train", "--seq-length", "1000"], "too few"),
    (["train", "--model", "custom", "--loss-steps", "all"], "--loss-steps last"),
])
def test_user_errors_are_one_line_and_exit_2(tmp_path, args, match):
    proc = rnnkit_cli(*args, cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert match in proc.stderr and "Traceback" not in proc.stderr


def test_help_for_every_subcommand(tmp_path):
    for sub, expect in (("train", "--preset"), ("test", "metrics.json"), ("visualize", "predictions_vs_true.png")):
        proc = rnnkit_cli(sub, "--help", cwd=tmp_path)
        assert expect in proc.stdout


def test_bench_is_loaded_only_when_asked_for(tmp_path):
    import importlib.util

    proc = rnnkit_cli("bench", "--help", cwd=tmp_path, check=False)
    if importlib.util.find_spec("rnnkit.bench") is None:
        assert proc.returncode == 2 and proc.stderr == "error: `rnnkit bench` is not available in this version of rnnkit\n"
    else:
        assert proc.returncode == 0 and proc.stdout.startswith("usage: rnnkit bench")
    assert rnnkit_cli("test", "--run", "r", "--bogus", cwd=tmp_path, check=False).returncode == 2  # argparse's own


def test_bench_prints_a_consistent_table(tmp_path):
    """A real `rnnkit bench` run: the header names the machine, every cell gets the three rows, torch.nn's
    ratio is 1, and each row's ratio and GFLOP/s follow from the times it prints."""
    pytest.importorskip("rnnkit.bench")
    B, T, H = 8, 20, 16
    proc = rnnkit_cli("bench", "--quick", "--sizes", f"{B}x{T}x{H}", "--cells", "rnn,lstm", "--threads", "1",
                      cwd=tmp_path)
    lines = proc.stdout.splitlines()
    assert re.match(r"torch \S+, 1 threads, float32, wall clock; large-GEMM peak .*: \d+ GFLOP/s$", lines[0])
    assert re.search(r"\d+ CPUs; fused loops' vectors (32|64) bytes$", lines[1])
    rows = [line.split() for line in lines[3:]]
    assert [(r[0], r[4]) for r in rows] == [(c, e) for c in ("rnn", "lstm") for e in ("fused", "reference", "torch")]

    def between(shown, low, high, half):  # a value printed to +-half, against a range it must meet
        assert shown + half >= low * (1 - 1e-9) and shown - half <= high * (1 + 1e-9), (shown, low, high)

    def span(ms):  # the times a time printed to 0.01 ms stands for
        return max(ms - 0.005, 1e-9), ms + 0.005

    flops = {cell: 2 * B * T * gates * H * (1 + H) for cell, gates in (("rnn", 1), ("lstm", 4))}
    for r in rows:
        cell, sizes, (train, x_train, gf_train, infer, x_infer, gf_infer) = r[0], r[1:4], map(float, r[5:])
        assert sizes == [str(B), str(T), str(H)]
        torch_row = next(t for t in rows if t[0] == cell and t[4] == "torch")
        for ms, ratio, torch_ms in ((train, x_train, float(torch_row[5])), (infer, x_infer, float(torch_row[8]))):
            (lo, hi), (tlo, thi) = span(ms), span(torch_ms)
            between(ratio, tlo / hi, thi / lo, 0.005)
        for ms, gf, n in ((train, gf_train, 3 * flops[cell]), (infer, gf_infer, flops[cell])):
            lo, hi = span(ms)
            between(gf, n / hi / 1e6, n / lo / 1e6, 0.05)
        if r[4] == "torch":
            assert x_train == x_infer == 1.0


@pytest.mark.parametrize("flags, message", [
    (["--cells", "rnn,tcn"], "error: --cells wants a comma-separated list among rnn, gru, lstm, got 'rnn,tcn'"),
    (["--sizes", "32x50"], "error: --sizes wants BATCHxSTEPSxHIDDEN[,...] with positive integers, got '32x50'"),
    (["--rounds", "0"], "error: --rounds wants 1 or more, got 0"),
    (["--threads", "-1"], "error: --threads wants 0 (torch's choice) or more, got -1"),
])
def test_bench_says_what_is_wrong_with_its_flags(tmp_path, flags, message):
    pytest.importorskip("rnnkit.bench")
    proc = rnnkit_cli("bench", *flags, cwd=tmp_path, check=False)
    assert (proc.returncode, proc.stderr, proc.stdout) == (2, message + "\n", "")
