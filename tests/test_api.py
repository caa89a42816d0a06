"""rnnkit.Forecaster: fit / evaluate / predict / save / load round trip, and the run directory's checks."""

import json

import numpy as np
import pytest
import torch

import rnnkit
from rnnkit.data import generate_combined_wave
from rnnkit.errors import ConfigError, RunError, ShapeError
from rnnkit.runs import write_json

TINY = dict(num_samples=160, seq_length=12, hidden_size=8, epochs=2, batch_size=16)


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def fitted():
    return rnnkit.Forecaster(cell="lstm", **TINY).fit(log=None, progress=False)


def test_round_trip_gives_the_same_predictions(fitted, tmp_path):
    fitted.save(tmp_path / "run")
    assert {p.name for p in (tmp_path / "run").iterdir()} == {"model.safetensors", "config.json", "history.json"}
    loaded = rnnkit.Forecaster.load(tmp_path / "run")
    assert loaded.config == fitted.config and loaded.history == json.loads(json.dumps(fitted.history))
    series = generate_combined_wave(12, 160)
    windows = np.stack([series[i:i + 12] for i in range(0, 100, 7)])  # (N, seq_length), original units
    np.testing.assert_array_equal(loaded.predict(windows), fitted.predict(windows))
    assert loaded.evaluate() == fitted.evaluate()


def test_predict_matches_the_test_split_in_original_units(fitted):
    true, pred = fitted.predictions("test")
    series = generate_combined_wave(12, 160)
    n_test = len(true)
    np.testing.assert_allclose(true.ravel(), series[-n_test:], atol=1e-5)
    first_test_window = series[160 - n_test - 12:160 - n_test]
    np.testing.assert_allclose(fitted.predict(first_test_window), pred[:1], atol=1e-5)
    m = fitted.evaluate()
    assert m["mse"] == pytest.approx(np.mean((true - pred) ** 2))
    assert m["rmse"] == pytest.approx(np.sqrt(m["mse"])) and m["mae"] == pytest.approx(np.abs(true - pred).mean())
    assert pred.shape == (n_test, 1, 1)


def test_custom_model_round_trip(tmp_path):
    f = rnnkit.Forecaster(preset="seed", **TINY).fit(log=None, progress=False)
    assert isinstance(f.model, rnnkit.CustomRNN) and f.loss_steps() == "last"
    f.save(tmp_path)
    g = rnnkit.Forecaster.load(tmp_path)
    assert isinstance(g.model, rnnkit.CustomRNN) and g.evaluate() == f.evaluate()


def test_unfitted_and_bad_inputs_are_user_errors(fitted):
    with pytest.raises(RunError, match="not trained"):
        rnnkit.Forecaster(**TINY).predict(np.zeros(12))
    with pytest.raises(ShapeError, match="seq_length"):
        fitted.predict(np.zeros((2, 12, 3)))
    with pytest.raises(ConfigError, match="unknown setting"):
        rnnkit.Forecaster(hidden=3)


def test_loading_a_broken_run_is_a_run_error(fitted, tmp_path):
    with pytest.raises(RunError, match="does not exist"):
        rnnkit.Forecaster.load(tmp_path / "nope")
    fitted.save(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(RunError, match="model.safetensors is missing"):
        rnnkit.Forecaster.load(tmp_path)
    fitted.save(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["config"]["model"]["hidden_size"] = 9
    write_json(tmp_path / "config.json", meta)
    with pytest.raises(RunError, match="do not match its config.json"):
        rnnkit.Forecaster.load(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(RunError, match="cannot read"):
        rnnkit.Forecaster.load(tmp_path)
    # Atomic writes leave no temporary files behind.
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_weights_are_safetensors_not_pickle(fitted, tmp_path):
    from safetensors.torch import load_file

    fitted.save(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    assert tensors.keys() == fitted.model.state_dict().keys()
