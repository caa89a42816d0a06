"""The training loop: it learns, logs the seed's line, stops early, is reproducible, refuses NaN; and the
config layer (TOML + overrides, unknown keys)."""

import math
import re

import pytest
import torch

from rnnkit.config import DataConfig, RunConfig, TrainConfig, resolve
from rnnkit.data import make_loaders, prepare
from rnnkit.errors import ConfigError, TrainingError
from rnnkit.models import RecurrentForecaster
from rnnkit.train import fit, mean_loss, next_step_targets

SMALL = DataConfig(num_samples=160, seq_length=12, batch_size=16, val_ratio=0.2)


pytestmark = pytest.mark.usefixtures("single_thread")


def small_run(cell="gru", **train):
    loaders = make_loaders(prepare(SMALL), SMALL.batch_size, seed=0)
    torch.manual_seed(0)
    model = RecurrentForecaster(cell, 1, 8, 1)
    cfg = TrainConfig(**{"epochs": 6, "log_every": 2, "loss_steps": "all", **train})
    lines = []
    hist = fit(model, loaders.train, loaders.val, cfg, log=lines.append, progress=False)
    return model, loaders, hist, lines


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_training_lowers_the_validation_loss(cell):
    loaders = make_loaders(prepare(SMALL), SMALL.batch_size, seed=0)
    torch.manual_seed(0)
    before = mean_loss(RecurrentForecaster(cell, 1, 8, 1), loaders.val)
    model, loaders, hist, _ = small_run(cell)
    assert mean_loss(model, loaders.val) < 0.75 * before
    assert hist["train_loss"][-1] < hist["train_loss"][0]


def test_history_and_the_seeds_log_line():
    _, _, hist, lines = small_run(patience=0)
    assert hist["epoch"] == [1, 2, 3, 4, 5, 6] and len(hist["val_loss"]) == 6 and len(hist["lr"]) == 6
    assert hist["lr"][0] == pytest.approx(0.01) and hist["lr"][-1] < hist["lr"][0]  # cosine
    assert len(lines) == 3
    m = re.fullmatch(r"Epoch 2/6, Loss: (\d+\.\d{6}), Time: \d+\.\d{2}s, Val Loss: \d+\.\d{6}", lines[0])
    assert m and float(m.group(1)) == pytest.approx(hist["train_loss"][1], abs=1e-6)
    # The kept weights are those of the best validation epoch.
    assert hist["val_loss"][hist["best_epoch"] - 1] == min(hist["val_loss"])


def test_early_stopping_restores_the_best_epoch():
    model, loaders, hist, lines = small_run(epochs=40, patience=1, lr=0.05, schedule="none")
    assert hist["stopped_early"] and len(hist["epoch"]) < 40
    assert mean_loss(model, loaders.val) == pytest.approx(min(hist["val_loss"]), rel=1e-6)
    assert lines[-1].startswith(f"Stopped early at epoch {hist['epoch'][-1]}")


def test_same_seed_same_model():
    a, *_ = small_run(epochs=2)
    b, *_ = small_run(epochs=2)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)


def test_a_nan_loss_is_a_training_error():
    loaders = make_loaders(prepare(SMALL), SMALL.batch_size, seed=0)
    model = RecurrentForecaster("gru", 1, 8, 1)
    with torch.no_grad():
        model.head.bias.fill_(math.nan)
    with pytest.raises(TrainingError, match="lower lr"):
        fit(model, loaders.train, loaders.val, TrainConfig(epochs=1), log=None, progress=False)


def test_next_step_targets():
    x = torch.arange(10.0).view(2, 5, 1)  # windows 0..4 and 5..9
    y = torch.tensor([[[5.0]], [[10.0]]])
    torch.testing.assert_close(next_step_targets(x, y), torch.arange(1.0, 11.0).view(2, 5, 1))


# ---- config ----------------------------------------------------------------------------------------

def test_precedence_defaults_preset_toml_flags(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[model]\nhidden_size = 7\n[train]\nepochs = 3\nlr = 1\n')
    cfg = resolve("seed", toml, epochs=5)
    assert cfg.model.model == "custom" and cfg.data.scaling == "none"  # preset
    assert cfg.model.hidden_size == 7 and cfg.train.lr == 1.0  # TOML (int accepted for a float)
    assert cfg.train.epochs == 5  # flag
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("text, match", [
    ("[model]\nhiden_size = 7\n", "unknown key.*hiden_size"),
    ("[modle]\n", "unknown config section"),
    ('[train]\nepochs = "ten"\n', "epochs must be int"),
    ("[data]\nval_ratio = 1.5\n", "val_ratio"),
    ("[model\n", "not valid TOML"),
])
def test_bad_toml_is_a_config_error(tmp_path, text, match):
    toml = tmp_path / "c.toml"
    toml.write_text(text)
    with pytest.raises(ConfigError, match=match):
        resolve(None, toml)


def test_custom_model_cannot_train_every_step():
    with pytest.raises(ConfigError, match="loss_steps='last'"):
        resolve(model="custom", loss_steps="all")
    with pytest.raises(ConfigError, match="unknown setting"):
        resolve(hidden=3)
