"""The Python API: :class:`Forecaster` (fit / evaluate / predict / save / load). The CLI is a thin layer
over it.

    import rnnkit
    f = rnnkit.Forecaster(cell="gru", hidden_size=64, epochs=30).fit()   # the seed's combined wave
    f.evaluate()                      # {'mse': ..., 'mae': ..., 'rmse': ...} on the test split
    f.save("runs/nb")
    g = rnnkit.Forecaster.load("runs/nb")
    g.predict(window)                 # window: (seq_length,) or (N, seq_length[, features]) array
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import __version__
from .config import RunConfig, resolve
from .data import Scaler, Windows, make_loaders, prepare
from .errors import ConfigError, RunError, ShapeError
from .evaluate import metrics
from .models import build_model
from .runs import load_run, save_run
from .train import fit as train_model

SPLITS = ("train", "val", "test")


class Forecaster:
    """A forecaster of the next value(s) of a series: data, model and training from one RunConfig.

    ``Forecaster(config=None, preset=None, **settings)``: settings are any field of DataConfig,
    ModelConfig or TrainConfig by name (``source``, ``seq_length``, ``cell``, ``hidden_size``,
    ``epochs``, ``lr``, ...), applied over ``config`` (or over the defaults / the named preset).

    After :meth:`fit` (or :meth:`load`): ``model`` (an nn.Module), ``scaler`` (fit on the training
    part) and ``history`` (per-epoch losses).
    """

    def __init__(self, config: RunConfig | None = None, *, preset: str | None = None, **settings: Any) -> None:
        if config is not None and preset is not None:
            raise ConfigError("give either a config or a preset, not both")
        base = config if config is not None else resolve(preset)
        self.config = base.override(**settings).validate()
        self.model: torch.nn.Module | None = None
        self.scaler: Scaler | None = None
        self.history: dict | None = None

    def __repr__(self) -> str:
        m = self.config.model
        what = "CustomRNN" if m.model == "custom" else f"{m.cell.upper()}"
        return (f"Forecaster({what}, hidden_size={m.hidden_size}, num_layers={m.num_layers}, "
                f"{'fitted' if self.model is not None else 'not fitted'})")

    # ---- training ---------------------------------------------------------------------------

    def fit(self, log: Callable[[str], None] | None = print, progress: bool | None = None) -> "Forecaster":
        """Build the data and the model from the config and train; returns self.

        log: where the seed's epoch lines go (None: silent). progress: tqdm bar (None: on a terminal).
        """
        cfg = self.config
        windows = prepare(cfg.data)
        loaders = make_loaders(windows, cfg.data.batch_size, cfg.train.seed)
        torch.manual_seed(cfg.train.seed)  # the initial weights
        x, y = windows.train.tensors
        self.model = self._build(x.shape[-1], y.shape[1] * y.shape[2], y.shape[2])
        self.scaler = windows.scaler
        train_cfg = dataclasses.replace(cfg.train, loss_steps=self.loss_steps())
        self.history = train_model(self.model, loaders.train, loaders.val, train_cfg, log=log, progress=progress)
        return self

    def loss_steps(self) -> str:
        """The training target the config resolves to: "all" or "last" ("auto": all unless custom)."""
        steps = self.config.train.loss_steps
        if steps == "auto":
            return "last" if self.config.model.model == "custom" else "all"
        return steps

    def _build(self, input_size: int, output_size: int, n_targets: int) -> torch.nn.Module:
        m = self.config.model
        self._io = {"input_size": input_size, "output_size": output_size, "n_targets": n_targets}
        return build_model(m.model, m.cell, input_size, m.hidden_size, output_size, m.num_layers, m.dropout,
                           m.residual, n_targets)

    def _fitted(self) -> torch.nn.Module:
        if self.model is None:
            raise RunError("this Forecaster is not trained yet; call .fit() or Forecaster.load(DIR) first")
        return self.model

    # ---- inference --------------------------------------------------------------------------

    @torch.no_grad()
    def _forward(self, x_scaled: torch.Tensor, out_shape: tuple[int, int]) -> np.ndarray:
        model = self._fitted().eval()
        pred = torch.cat([model(b) for b in x_scaled.split(1024)]) if len(x_scaled) else x_scaled.new_zeros(0)
        return pred.reshape(len(x_scaled), *out_shape).double().numpy()  # (N, H, T)

    def windows(self) -> Windows:
        """The run's windows (scaled with the fitted scaler)."""
        self._fitted()
        return prepare(self.config.data, scaler=self.scaler)

    def predictions(self, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
        """(true, predicted) of every window of a split, each (N, horizon, targets), original units."""
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r} (use one of: {', '.join(SPLITS)})")
        x, y = getattr(self.windows(), split).tensors
        pred = self._forward(x, tuple(y.shape[1:]))
        cols = list(range(y.shape[2]))  # target columns of the series (the first ones)
        return self.scaler.inverse(y.double().numpy(), cols), self.scaler.inverse(pred, cols)

    def evaluate(self, split: str = "test") -> dict[str, float]:
        """MSE, MAE and RMSE of a split (default: test), in the data's original units."""
        return metrics(*self.predictions(split))

    def predict(self, x: Any) -> np.ndarray:
        """Forecast after each window. x, original units: (seq_length,) one univariate window,
        (N, seq_length) univariate windows, or (N, seq_length, features). Returns (N, horizon, targets)."""
        self._fitted()
        a = np.asarray(x, dtype=np.float64)
        F = self._io["input_size"]
        if a.ndim == 1:
            a = a[None, :, None]
        elif a.ndim == 2 and F == 1:
            a = a[:, :, None]
        if a.ndim != 3 or a.shape[2] != F or a.shape[1] < 1:
            raise ShapeError(f"predict expects windows of shape (N, seq_length, {F}) (or (N, seq_length) / "
                             f"(seq_length,) for one feature), got {np.shape(x)}")
        z = torch.as_tensor(self.scaler.transform(a), dtype=torch.float32)  # (N, T, F)
        H = self.config.data.horizon
        pred = self._forward(z, (H, self._io["n_targets"]))
        return self.scaler.inverse(pred, list(range(pred.shape[2])))

    # ---- persistence ------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write the run directory: model.safetensors, config.json (config, scaler, sizes, version),
        history.json."""
        model = self._fitted()
        meta = {"rnnkit_version": __version__, "config": self.config.to_dict(),
                "scaler": self.scaler.to_dict(), "io": self._io}
        return save_run(directory, model.state_dict(), meta, self.history)

    @classmethod
    def load(cls, directory: str | Path) -> "Forecaster":
        """Rebuild a saved run from its directory alone (no unpickling)."""
        meta, state, history = load_run(directory)
        try:
            f = cls(RunConfig.from_dict(meta["config"]))
            f.scaler = Scaler.from_dict(meta["scaler"])
            io = meta["io"]
            f.model = f._build(int(io["input_size"]), int(io["output_size"]), int(io["n_targets"]))
        except (ConfigError, KeyError, TypeError, ValueError) as e:
            raise RunError(f"{Path(directory) / 'config.json'} is not a valid rnnkit run config ({e}); "
                           f"retrain with `rnnkit train --out {directory}`") from None
        try:
            f.model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise RunError(f"the weights in {directory} do not match its config.json ({first}); "
                           f"retrain the run") from None
        f.model.eval()
        f.history = history
        return f
