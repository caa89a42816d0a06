"""rnnkit.data against the seed's own code (rnn_custom_pytorch/data.py): arrays, windows, split; and the
scaler seeing the training part only."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnkit.config import DataConfig
from rnnkit.data import (Scaler, chronological_split, generate_combined_wave, generate_sine_wave,
                         get_data_loaders, make_loaders, make_windows, prepare)
from rnnkit.errors import DataError

SEED_DIR = Path(__file__).resolve().parents[1] / "rnn_custom_pytorch"


@pytest.fixture(scope="module")
def seed_data():
    spec = importlib.util.spec_from_file_location("seed_data", SEED_DIR / "data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("num_samples", [1000, 137])
def test_generators_equal_the_seed_arrays(seed_data, num_samples):
    np.testing.assert_array_equal(generate_sine_wave(50, num_samples), seed_data.generate_sine_wave(50, num_samples))
    np.testing.assert_array_equal(generate_combined_wave(50, num_samples),
                                  seed_data.generate_combined_wave(50, num_samples))
    x = np.linspace(0, num_samples * 0.1, num_samples)  # DESIGN.md's formula, independently
    np.testing.assert_array_equal(generate_combined_wave(50, num_samples), np.sin(x) + np.cos(x) + np.sign(np.sin(x)))


def test_windows_and_split_equal_the_seeds(seed_data):
    seed_train, seed_test = seed_data.get_data_loaders()
    ours = get_data_loaders()  # seed defaults: no validation, no scaling
    assert len(ours.train.dataset) == len(seed_train.dataset) == 760
    assert len(ours.test.dataset) == len(seed_test.dataset) == 190
    assert ours.val is None
    for mine, theirs in ((ours.train.dataset, seed_train.dataset), (ours.test.dataset, seed_test.dataset)):
        for i in (0, 1, len(theirs) // 2, len(theirs) - 1):
            x, y = theirs[i]  # (50, 1), (1,)
            torch.testing.assert_close(mine[i][0], x, rtol=0, atol=0)
            torch.testing.assert_close(mine[i][1], y.view(1, 1), rtol=0, atol=0)  # (horizon, targets)
    # The training loader shuffles, the test loader keeps time order.
    first_test_x, _ = next(iter(ours.test))
    torch.testing.assert_close(first_test_x[0], seed_test.dataset[0][0], rtol=0, atol=0)
    assert seed_train.batch_size == ours.train.batch_size == 32


def test_validation_is_carved_from_the_end_of_the_training_windows():
    split = chronological_split(1000, 50, 1, train_ratio=0.8, val_ratio=0.1)
    assert (split.train, split.val, split.test) == (range(0, 684), range(684, 760), range(760, 950))
    loaders = get_data_loaders(val_ratio=0.1)
    series = generate_combined_wave(50, 1000)
    assert len(loaders.val.dataset) == 76
    torch.testing.assert_close(loaders.val.dataset[0][1], torch.tensor([[series[684 + 50]]], dtype=torch.float32))
    torch.testing.assert_close(loaders.test.dataset[0][1], torch.tensor([[series[760 + 50]]], dtype=torch.float32))


def test_scaler_is_fit_on_the_training_part_only():
    cfg = DataConfig(val_ratio=0.1, scaling="standard")
    w = prepare(cfg)
    series = generate_combined_wave(50, 1000)
    seen = series[:684 - 1 + 50 + 1]  # every point of the 684 training windows, inputs and targets
    np.testing.assert_allclose(w.scaler.mean, [seen.mean()], rtol=1e-12)
    np.testing.assert_allclose(w.scaler.std, [seen.std()], rtol=1e-12)
    assert not np.isclose(w.scaler.mean[0], series[:735].mean())  # one point more would change it
    # Scaled windows are the scaled series, and inverse() undoes the scaling.
    x, y = w.test.tensors
    np.testing.assert_allclose(w.scaler.inverse(y.double().numpy()).ravel(), series[810:], atol=1e-5)
    assert x.shape == (190, 50, 1) and y.shape == (190, 1, 1)


def test_scaler_none_is_the_identity():
    w = prepare(DataConfig(scaling="none", val_ratio=0.0))
    series = generate_combined_wave(50, 1000)
    np.testing.assert_array_equal(w.train.tensors[1].numpy().ravel(), series[50:810].astype(np.float32))
    assert Scaler.from_dict(w.scaler.to_dict()).to_dict() == w.scaler.to_dict()


def test_make_windows_general_shapes():
    series = np.arange(40.0).reshape(20, 2)  # (N, F): two features
    ds = make_windows(series, seq_length=4, horizon=3, target_cols=(1,))
    x, y = ds.tensors
    assert x.shape == (20 - 4 - 3 + 1, 4, 2) and y.shape == (14, 3, 1)
    np.testing.assert_array_equal(x[5].numpy(), series[5:9])
    np.testing.assert_array_equal(y[5, :, 0].numpy(), series[9:12, 1])


def test_training_loader_shuffles_reproducibly():
    w = prepare(DataConfig(num_samples=120, seq_length=10, val_ratio=0.0))
    first = [next(iter(make_loaders(w, 8, seed=3).train))[1] for _ in range(2)]
    other = next(iter(make_loaders(w, 8, seed=4).train))[1]
    torch.testing.assert_close(first[0], first[1])
    assert not torch.equal(first[0], other)


@pytest.mark.parametrize("num_samples", [51, 30])
def test_too_short_series_is_a_data_error(num_samples):
    with pytest.raises(DataError, match="too few"):
        get_data_loaders(seq_length=50, num_samples=num_samples)
