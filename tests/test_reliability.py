"""Nothing lost, nothing executed: bitwise resume, SIGKILL and Ctrl-C mid-training, training health,
atomic writes, and untrusted files (the seed's .pth, pickles where weights should be)."""

import importlib.util
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load, load_file, save

import rnnkit
from helpers import rnnkit_cli
from rnnkit.config import DataConfig, TrainConfig
from rnnkit.data import make_loaders, prepare
from rnnkit.errors import RunError, TrainingError
from rnnkit.models import RecurrentForecaster
from rnnkit.runs import CHECKPOINT, WEIGHTS, load_seed_checkpoint, write_bytes
from rnnkit.train import fit

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(num_samples=200, seq_length=10, hidden_size=4, batch_size=16)
TINY_FLAGS = ["--num-samples", "200", "--seq-length", "10", "--hidden-size", "4", "--batch-size", "16"]


pytestmark = pytest.mark.usefixtures("single_thread")


def weights(directory):
    return load_file(Path(directory) / WEIGHTS)


def last_epoch_weights(directory):
    """The weights after the last epoch (the kept ones may be an earlier, best-validation epoch's)."""
    return {k: v for k, v in load_file(Path(directory) / CHECKPOINT).items() if k.startswith("model.")}


def assert_bitwise(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


class Crash(Exception):
    pass


def crash_at(epoch):
    """A log callback (log_every=1) that kills training during the given epoch's bookkeeping, before
    that epoch's checkpoint is written: as a crash, the run keeps the checkpoint of epoch - 1."""
    def log(line):
        if line.startswith(f"Epoch {epoch}/"):
            raise Crash
    return log


# ---- bitwise resume, in process ----------------------------------------------------------------------

@pytest.mark.parametrize("settings", [
    # dropout (torch's RNG), cosine schedule, validation + early stopping state, shuffled batches
    dict(cell="gru", num_layers=2, dropout=0.3, epochs=6, patience=3),
    # plateau schedule, LSTM, no validation
    dict(cell="lstm", schedule="plateau", val_ratio=0.0, epochs=5),
    # the seed's CustomRNN, constant lr, last-step loss
    dict(preset="seed", epochs=4),
], ids=["gru-dropout-cosine", "lstm-plateau", "seed"])
def test_resume_after_a_crash_is_bitwise_the_uninterrupted_run(tmp_path, settings):
    preset = settings.pop("preset", None)
    make = lambda: rnnkit.Forecaster(preset=preset, **TINY, log_every=1, **settings)  # noqa: E731
    whole = make().fit(log=None, progress=False, run_dir=tmp_path / "whole")
    with pytest.raises(Crash):
        make().fit(log=crash_at(3), progress=False, run_dir=tmp_path / "crashed")
    assert not (tmp_path / "crashed" / WEIGHTS).exists() and (tmp_path / "crashed" / CHECKPOINT).exists()
    resumed = rnnkit.Forecaster.resume(tmp_path / "crashed", log=None, progress=False)
    assert_bitwise(weights(tmp_path / "crashed"), weights(tmp_path / "whole"))
    assert_bitwise(last_epoch_weights(tmp_path / "crashed"), last_epoch_weights(tmp_path / "whole"))
    assert resumed.history["train_loss"] == whole.history["train_loss"]
    assert resumed.history["best_epoch"] == whole.history["best_epoch"]
    # The loaded run is the same model, and a second --resume has nothing left to do.
    assert rnnkit.Forecaster.load(tmp_path / "crashed").evaluate() == whole.evaluate()


def test_the_shuffling_state_is_what_makes_resume_bitwise(tmp_path):
    """Negative control: the same resume from a checkpoint whose shuffling generator was reset to its
    seed gives other weights, so the comparison above can fail."""
    make = lambda: rnnkit.Forecaster(**TINY, epochs=4, log_every=1)  # noqa: E731
    make().fit(log=None, progress=False, run_dir=tmp_path / "whole")
    with pytest.raises(Crash):
        make().fit(log=crash_at(3), progress=False, run_dir=tmp_path / "crashed")
    path = tmp_path / "crashed" / CHECKPOINT
    data = path.read_bytes()
    tensors = load(data)
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])["__metadata__"]
    tensors["rng.shuffle"] = torch.Generator().manual_seed(0).get_state()
    path.write_bytes(save(tensors, metadata=header))
    rnnkit.Forecaster.resume(tmp_path / "crashed", log=None, progress=False)
    a, b = last_epoch_weights(tmp_path / "crashed"), last_epoch_weights(tmp_path / "whole")
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_a_killed_run_loads_the_weights_training_would_keep(tmp_path):
    f = rnnkit.Forecaster(**TINY, epochs=5, log_every=1)
    with pytest.raises(Crash):
        f.fit(log=crash_at(4), progress=False, run_dir=tmp_path)
    g = rnnkit.Forecaster.load(tmp_path)  # no model.safetensors: the checkpoint of epoch 3
    assert g.history["epoch"] == [1, 2, 3]
    best = g.history["best_epoch"]
    assert g.history["val_loss"][best - 1] == min(g.history["val_loss"])
    assert set(g.evaluate()) >= {"mse", "mae", "rmse"}


# ---- the real command: SIGKILL and Ctrl-C --------------------------------------------------------------

# `python -m rnnkit` started as from a terminal, with Ctrl-C's default handler: a child inherits an
# ignored SIGINT (then rnnkit leaves it ignored, as under nohup), and the test suite itself runs with
# SIGINT ignored when started as a background job of a non-interactive shell (`bash .ci/run &`).
AS_FROM_A_TERMINAL = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                      "runpy.run_module('rnnkit', run_name='__main__', alter_sys=True)")


def start_training(out):
    return subprocess.Popen([sys.executable, "-c", AS_FROM_A_TERMINAL, "train", *TRAIN, "--out", str(out)],
                            cwd=out.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(proc, out, timeout=60.0):
    """Poll (a bounded wait loop, not a sleep standing in for synchronisation) until the first
    checkpoint exists; the process must still be training then."""
    deadline = time.monotonic() + timeout
    while not (out / CHECKPOINT).exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.005)


EPOCHS = 60  # long enough that the signal lands mid-training, short enough for a few seconds
TRAIN = [*TINY_FLAGS, "--epochs", str(EPOCHS), "--patience", "0", "--quiet"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    from rnnkit.cli import main

    out = tmp_path_factory.mktemp("whole") / "run"
    assert main(["train", *TRAIN, "--out", str(out)]) == 0  # in process: one Python start fewer
    return weights(out), json.loads((out / "history.json").read_text())


def test_sigkill_then_test_visualize_and_resume(tmp_path, uninterrupted):
    out = tmp_path / "run"
    proc = start_training(out)
    wait_for_checkpoint(proc, out)
    proc.kill()
    assert proc.wait() == -signal.SIGKILL
    assert not (out / WEIGHTS).exists()
    test = rnnkit_cli("test", "--run", out, cwd=tmp_path, check=False)  # falls back to the checkpoint's weights
    assert test.returncode == 0 and "Test MSE Loss:" in test.stdout, test.stderr
    assert "using its checkpoint of epoch" in test.stderr
    vis = rnnkit_cli("visualize", "--run", out, cwd=tmp_path, check=False)
    assert vis.returncode == 0 and (out / "predictions_vs_true.png").exists(), vis.stderr
    resume = rnnkit_cli("train", "--resume", out, "--quiet", cwd=tmp_path, check=False)
    assert resume.returncode == 0, resume.stderr
    assert_bitwise(weights(out), uninterrupted[0])
    history = json.loads((out / "history.json").read_text())
    assert history["epoch"] == list(range(1, EPOCHS + 1))
    assert history["train_loss"] == uninterrupted[1]["train_loss"]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    again = rnnkit_cli("train", "--resume", out, cwd=tmp_path, check=False)
    assert again.returncode == 0 and "nothing to resume" in again.stdout


def test_ctrl_c_saves_the_epoch_and_exits_130(tmp_path, uninterrupted):
    out = tmp_path / "run"
    proc = start_training(out)
    wait_for_checkpoint(proc, out)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert f"continue with `rnnkit train --resume {out}`" in stderr.splitlines()[-1]
    assert not (out / WEIGHTS).exists()
    resume = rnnkit_cli("train", "--resume", out, "--quiet", cwd=tmp_path, check=False)
    assert resume.returncode == 0, resume.stderr
    assert_bitwise(weights(out), uninterrupted[0])


# ---- training health ---------------------------------------------------------------------------------

SMALL = DataConfig(num_samples=160, seq_length=12, batch_size=16, val_ratio=0.2)


def test_a_nan_loss_stops_and_keeps_the_last_good_checkpoint():
    loaders = make_loaders(prepare(SMALL), SMALL.batch_size, seed=0)
    torch.manual_seed(0)
    model = RecurrentForecaster("gru", 1, 8, 1)
    saved = []

    def checkpoint(tensors, state):
        saved.append((state["loop"]["epoch"], {k: v.clone() for k, v in tensors.items()}))
        with torch.no_grad():  # the model goes bad right after its first healthy epoch
            model.head.bias.fill_(float("nan"))

    with pytest.raises(TrainingError, match=r"at epoch 2 \(lower lr"):
        fit(model, loaders.train, loaders.val, TrainConfig(epochs=5, loss_steps="all"), log=None,
            progress=False, checkpoint=checkpoint)
    assert [e for e, _ in saved] == [1]
    assert all(torch.isfinite(t).all() for k, t in saved[0][1].items() if t.is_floating_point())


def test_an_exploding_gradient_stops_training_and_names_the_fix():
    x = torch.randn(64, 5, 1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.full((64, 1, 1), 1e7)),
                                         batch_size=16)
    model = RecurrentForecaster("rnn", 1, 4, 1)
    with pytest.raises(TrainingError, match="gradient norm exploded.*clip_grad_norm"):
        fit(model, loader, None, TrainConfig(epochs=1, clip_grad_norm=0.0, loss_steps="last"), log=None,
            progress=False)


def test_a_diverging_cli_run_is_one_error_line(tmp_path):
    proc = rnnkit_cli("train", *TINY_FLAGS, "--epochs", "3", "--lr", "1e30", "--clip-grad-norm", "0",
                      "--out", "r", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and "--lr" in proc.stderr


# ---- atomic writes -----------------------------------------------------------------------------------

def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "config.json"
    target.write_text("old")

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(RunError, match="No space left"):
        write_bytes(target, b"new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["config.json"]


# ---- untrusted files ---------------------------------------------------------------------------------

def seed_model_class():
    spec = importlib.util.spec_from_file_location("seed_model", ROOT / "rnn_custom_pytorch" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CustomRNN


def test_the_seeds_pth_imports_and_predicts_as_the_seed(tmp_path):
    torch.manual_seed(3)
    seed = seed_model_class()(1, 32, 1)
    torch.save(seed.state_dict(), tmp_path / "rnn_custom_model.pth")  # as the seed's train.py does
    proc = rnnkit_cli("import-seed", "rnn_custom_model.pth", "--out", "run", cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr
    f = rnnkit.Forecaster.load(tmp_path / "run")
    assert isinstance(f.model, rnnkit.CustomRNN) and f.config.model.hidden_size == 32
    for name, p in seed.state_dict().items():
        assert torch.equal(f.model.state_dict()[name], p), name
    x, y = f.windows().test.tensors  # no scaling (the seed's preset): the seed's own inputs
    with torch.no_grad():
        expected = seed(x).double().numpy()
    _, pred = f.predictions("test")
    assert abs(pred.reshape(-1) - expected.reshape(-1)).max() < 1e-5
    assert rnnkit_cli("test", "--run", "run", cwd=tmp_path, check=False).returncode == 0


class Payload:
    """Unpickling this calls open(marker, "w"): a file appears if the pickle is ever executed."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_with_objects_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    zip_pth, legacy_pth = tmp_path / "evil.pth", tmp_path / "evil_legacy.pth"
    torch.save({"W_ih": Payload(marker), "W_hh": torch.zeros(2, 2)}, zip_pth)
    legacy_pth.write_bytes(pickle.dumps({"W_ih": Payload(marker)}, protocol=2))
    for path in (zip_pth, legacy_pth):
        with pytest.raises(RunError, match="refused to load"):
            load_seed_checkpoint(path)
    proc = rnnkit_cli("import-seed", zip_pth, "--out", "run", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "refused to load" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()
    # A pickle where a run's weights should be: safetensors parses only its header, nothing runs.
    f = rnnkit.Forecaster(**TINY, epochs=1).fit(log=None, progress=False, run_dir=tmp_path / "r")
    (tmp_path / "r" / WEIGHTS).write_bytes(pickle.dumps(f.model.state_dict() | {"x": Payload(marker)}))
    with pytest.raises(RunError, match="not a valid safetensors file"):
        rnnkit.Forecaster.load(tmp_path / "r")
    assert not marker.exists()
    # Positive control: the payload is live, so the checks above could have failed.
    pickle.loads(legacy_pth.read_bytes())
    assert marker.exists()


def test_a_state_dict_of_another_model_is_refused(tmp_path):
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(RunError, match="not a CustomRNN state_dict"):
        load_seed_checkpoint(tmp_path / "other.pth")
    torch.save({"W_ih": torch.zeros(1, 4), "W_hh": torch.zeros(5, 5), "W_ho": torch.zeros(4, 1),
                "bias_h": torch.zeros(4), "bias_o": torch.zeros(1)}, tmp_path / "ragged.pth")
    with pytest.raises(RunError, match="not a consistent CustomRNN"):
        load_seed_checkpoint(tmp_path / "ragged.pth")
