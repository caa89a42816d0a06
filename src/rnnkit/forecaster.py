"""The Python API: :class:`Forecaster` (fit / evaluate / forecast / backtest / save / load). The CLI is a
thin layer over it.

    import rnnkit
    f = rnnkit.Forecaster(cell="gru", hidden_size=64, epochs=30).fit()   # the seed's combined wave
    f.evaluate()                      # {'mse': ..., 'mae': ..., 'rmse': ..., 'smape': ..., 'mase': ...}
    f.save("runs/nb")
    g = rnnkit.Forecaster.load("runs/nb")
    g.predict(window)                 # window: (seq_length,) or (N, seq_length[, features]) array

    # a real series: a CSV path, a DataFrame or an array; 12 steps ahead
    f = rnnkit.Forecaster(horizon=12).fit("examples/airline_passengers.csv", target="passengers",
                                          time_col="month")
    f.evaluate(baselines=True)        # + naive, seasonal naive and linear AR on the same windows
    f.forecast()                      # DataFrame: step 1..12, passengers (+ month)
    f.backtest(folds=3, refit=True)   # rolling origin
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import TensorDataset

from . import __version__, distributed
from .config import CSV_PRESET, RunConfig, resolve
from .csvdata import TableSeries, frame_series, names, read_csv, write_csv
from .data import (Scaler, Split, Windows, chronological_split, load_series, make_loaders, resolve_data,
                   split_windows)
from .errors import ConfigError, DataError, RunError, ShapeError
from .evaluate import backtest as run_backtest
from .evaluate import metrics, report, ridge_ar
from .models import build_model, init_linear_skip
from .runs import (begin_run, load_checkpoint, load_run, load_seed_checkpoint, meta_digest, read_config,
                   read_meta, save_checkpoint, save_run)
from .train import fit as train_model

SPLITS = ("train", "val", "test")
SERIES = "series.csv"  # a CSV run keeps the series it was trained on, so test/backtest need no outside file


class Forecaster:
    """A forecaster of the next value(s) of a series: data, model and training from one RunConfig.

    ``Forecaster(config=None, preset=None, **settings)``: settings are any field of DataConfig,
    ModelConfig or TrainConfig by name (``source``, ``seq_length``, ``horizon``, ``strategy``,
    ``cell``, ``hidden_size``, ``epochs``, ``lr``, ...), applied over ``config`` (or over the
    defaults / the named preset).

    After :meth:`fit` (or :meth:`load`): ``model`` (an nn.Module), ``scaler`` (fit on the training
    part), ``series`` (the TableSeries trained on) and ``history`` (per-epoch losses); ``config``
    holds the resolved settings (seq_length and season made concrete).
    """

    def __init__(self, config: RunConfig | None = None, *, preset: str | None = None, **settings: Any) -> None:
        if config is not None and preset is not None:
            raise ConfigError("give either a config or a preset, not both")
        base = config if config is not None else resolve(preset)
        self.config = base.override(**settings).validate()
        self._csv_defaults = config is None and preset is None  # fit(table) may switch to the csv preset
        self._settings = settings
        self.model: torch.nn.Module | None = None
        self.scaler: Scaler | None = None
        self.series: TableSeries | None = None
        self.history: dict | None = None

    def __repr__(self) -> str:
        m = self.config.model
        what = "CustomRNN" if m.model == "custom" else f"{m.cell.upper()}"
        return (f"Forecaster({what}, hidden_size={m.hidden_size}, num_layers={m.num_layers}, "
                f"{'fitted' if self.model is not None else 'not fitted'})")

    # ---- training ---------------------------------------------------------------------------

    def fit(self, data: Any = None, *, target: str | list | None = None, features: str | list | None = None,
            time_col: str | None = None, fill: str | None = None, log: Callable[[str], None] | None = print,
            progress: bool | None = None, run_dir: str | Path | None = None, force: bool = False,
            device: str | torch.device = "auto") -> "Forecaster":
        """Build the data and the model from the config and train; returns self.

        data: None (the config's series: a seed wave or its ``csv``), a CSV path, a pandas DataFrame or
        an array (N,) / (N, F) (columns "0", "1", ...; target "0" by default). target / features
        (column names, a list or "a,b"), time_col and fill override the config's.
        log: where the seed's epoch lines go (None: silent). progress: tqdm bar (None: on a terminal).
        run_dir: train into this run directory: config.json first, a checkpoint every
        ``checkpoint_every`` epochs (see :meth:`resume`), the saved run at the end; a directory that
        already holds a run is refused unless ``force`` (which replaces it).
        device: where to train: "auto" (CUDA when torch sees a device, else the CPU), "cpu", "cuda" or a
        torch.device; the trained model is returned on the CPU. Under torchrun (a process group is up)
        it trains with DistributedDataParallel and only rank 0 writes ``run_dir``.
        """
        columns = {"target": target, "features": features, "time_col": time_col, "fill": fill}
        settings = {k: ",".join(names(v)) if k in ("target", "features") and v is not None else v
                    for k, v in columns.items()}
        table = None
        if isinstance(data, (str, Path)):
            settings.update(source="csv", csv=str(data))
        elif data is not None:
            settings.update(source="csv", csv="")
            table = data
            if settings["target"] is None and not self.config.data.target:
                settings["target"] = ""  # an array's default target; a DataFrame's is an error
        base = self.config
        if self._csv_defaults and "source" in settings and self.config.data.source != "csv":
            base = resolve(CSV_PRESET).override(**self._settings)
        cfg = base.override(**settings)
        if table is None:
            cfg.validate()
        series = load_series(cfg.data, table)
        if table is not None and not cfg.data.target:  # an array: record the columns frame_series chose
            cfg = cfg.override(target=",".join(series.columns[:series.n_targets]),
                               features=",".join(series.columns[series.n_targets:]))
        cfg = dataclasses.replace(cfg, data=resolve_data(cfg.data, series)).validate()
        self.config, self.series = cfg, series
        d = cfg.data
        self._train(chronological_split(len(series.values), d.seq_length, d.horizon, d.train_ratio, d.val_ratio),
                    log, progress, run_dir=run_dir, force=force, device=device)
        return self

    def _train(self, split: Split, log: Callable[[str], None] | None = None, progress: bool | None = False,
               run_dir: str | Path | None = None, resume: bool = False, force: bool = False,
               device: str | torch.device = "auto") -> None:
        cfg = self.config
        device = distributed.resolve_device(device)
        main = distributed.is_main()  # under DDP only rank 0 writes the run directory
        windows = split_windows(self.series.values, split, cfg.data.scaling, self.series.n_targets)
        if cfg.data.strategy == "recursive":  # train one step ahead; forecasts are fed back
            one = lambda ds: TensorDataset(ds.tensors[0], ds.tensors[1][:, :1])  # noqa: E731
            windows = windows._replace(train=one(windows.train), val=one(windows.val))
        loaders = make_loaders(windows, cfg.data.batch_size, cfg.train.seed)
        torch.manual_seed(cfg.train.seed)  # the initial weights
        x, y = windows.train.tensors
        self.model = self._build(x.shape[-1], y.shape[1] * y.shape[2], y.shape[2])
        self.scaler = windows.scaler
        if self._io.get("linear_window"):  # start from the ridge AR of the same windows
            weights, _ = ridge_ar(windows.train, windows.val, residual=self.config.model.residual)
            init_linear_skip(self.model, torch.as_tensor(weights))
        train_cfg = dataclasses.replace(cfg.train, loss_steps=self.loss_steps())
        checkpoint = start = None
        if run_dir is not None:
            meta = self._meta()
            if not resume:
                if main:
                    begin_run(run_dir, meta, force)
                    self._save_series(run_dir)
            elif meta_digest(meta) != meta_digest(read_meta(run_dir)):
                raise RunError(f"{Path(run_dir) / 'config.json'} no longer matches what its settings and data give "
                               f"(edited, or another rnnkit version); retrain with --force")
            else:
                start = load_checkpoint(run_dir, meta)
            checkpoint = functools.partial(save_checkpoint, run_dir, meta)
        self.model.to(device)
        self.history = train_model(self.model, loaders.train, loaders.val, train_cfg, log=log, progress=progress,
                                   checkpoint=checkpoint, resume=start)
        self.model.cpu()  # inference and saving run on the CPU
        if run_dir is not None and main:
            self.save(run_dir)

    def refit(self, split: Split) -> "Forecaster":
        """A new Forecaster with this one's config and series, trained (silently) on ``split``."""
        g = Forecaster(self.config)
        g.series = self.series
        g._train(split)
        return g

    def loss_steps(self) -> str:
        """The training target the config resolves to: "all" or "last" ("auto": all unless custom)."""
        steps = self.config.train.loss_steps
        if steps == "auto":
            return "last" if self.config.model.model == "custom" else "all"
        return steps

    def _build(self, input_size: int, output_size: int, n_targets: int, linear_window: int | None = None) -> torch.nn.Module:
        m = self.config.model
        if linear_window is None:
            on = m.linear_skip == "yes" or (m.linear_skip == "auto" and self.config.data.source == "csv")
            linear_window = self.config.data.seq_length if on and m.model == "recurrent" else 0
        self._io = {"input_size": input_size, "output_size": output_size, "n_targets": n_targets,
                    "linear_window": linear_window}
        return build_model(m.model, m.cell, input_size, m.hidden_size, output_size, m.num_layers, m.dropout,
                           m.residual, n_targets, linear_window)

    def _fitted(self) -> torch.nn.Module:
        if self.model is None:
            raise RunError("this Forecaster is not trained yet; call .fit() or Forecaster.load(DIR) first")
        return self.model

    # ---- inference --------------------------------------------------------------------------

    @torch.no_grad()
    def _forecast(self, x_scaled: torch.Tensor, horizon: int | None = None) -> np.ndarray:
        """Scaled forecasts (N, horizon, targets) after each scaled window x (N, S, F): one pass of the
        direct head (its first ``horizon`` steps), or one step at a time fed back (recursive)."""
        model = self._fitted().eval()
        T = self._io["n_targets"]
        trained = self.config.data.horizon
        H = horizon or trained
        if self.config.data.strategy == "direct" and H > trained:
            raise ConfigError(f"this run forecasts {trained} steps at once (--strategy direct); ask for "
                              f"--horizon <= {trained}, or train with --horizon {H} or --strategy recursive")
        run = lambda x: torch.cat([model(b) for b in x.split(1024)]) if len(x) else x.new_zeros(0, T)  # noqa: E731
        if self.config.data.strategy == "direct":
            pred = run(x_scaled).reshape(len(x_scaled), trained, T)[:, :H]  # (N, H, T)
        else:
            x, steps = x_scaled, []
            for _ in range(H):
                step = run(x).reshape(len(x), 1, T)  # (N, 1, T)
                steps.append(step)
                x = torch.cat([x[:, 1:], step], dim=1)  # (N, S, F): every input is a target
            pred = torch.cat(steps, dim=1)  # (N, H, T)
        return pred.double().numpy()

    def split(self) -> Split:
        """The run's chronological split of its series."""
        self._fitted()
        d = self.config.data
        return chronological_split(len(self.series.values), d.seq_length, d.horizon, d.train_ratio, d.val_ratio)

    def windows(self) -> Windows:
        """The run's windows (scaled with the fitted scaler)."""
        return split_windows(self.series.values, self.split(), self.scaler, self.series.n_targets)

    def window_predictions(self, windows: TensorDataset) -> tuple[np.ndarray, np.ndarray]:
        """(true, predicted) of scaled windows, each (N, horizon, targets), in original units."""
        x, y = windows.tensors
        pred = self._forecast(x, y.shape[1])
        cols = list(range(y.shape[2]))  # target columns of the series (the first ones)
        return self.scaler.inverse(y.double().numpy(), cols), self.scaler.inverse(pred, cols)

    def predictions(self, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
        """(true, predicted) of every window of a split, each (N, horizon, targets), original units."""
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r} (use one of: {', '.join(SPLITS)})")
        return self.window_predictions(getattr(self.windows(), split))

    def evaluate(self, split: str = "test", season: int | None = None, baselines: bool = False) -> dict:
        """MSE, MAE, RMSE, sMAPE and MASE of a split (default: test), in the data's original units;
        MASE's scale is the training part's seasonal-naive error (``season``, default: the run's).
        baselines=True (test split only): also naive, seasonal naive and linear AR on the same windows,
        under "baselines", with "season", "windows" and "horizon"."""
        if split == "test":
            out = report(self, self.split(), season, baselines)
            return out if baselines else {k: out[k] for k in ("mse", "mae", "rmse", "smape", "mase")}
        if baselines:
            raise ConfigError("baselines are reported on the test split only")
        return metrics(*self.predictions(split))

    def backtest(self, folds: int = 3, refit: bool = False, fold_size: int | None = None,
                 season: int | None = None, log: Callable[[str], None] | None = None) -> dict:
        """Rolling-origin evaluation, one row per fold plus the mean: see :func:`rnnkit.evaluate.backtest`."""
        return run_backtest(self, folds, refit, fold_size, season, log)

    def predict(self, x: Any, horizon: int | None = None) -> np.ndarray:
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
        pred = self._forecast(z, horizon)
        return self.scaler.inverse(pred, list(range(pred.shape[2])))

    def history_series(self, data: Any = None) -> TableSeries:
        """A history to forecast from, read with the run's columns: None (the series trained on), a CSV
        path, a DataFrame or an array; it may be longer than the training series."""
        self._fitted()
        d = self.config.data
        if data is None:
            return self.series
        if isinstance(data, TableSeries):
            return data
        if isinstance(data, (str, Path)):
            return read_csv(data, d.target, d.features, d.time_col, d.fill)
        return frame_series(data, d.target, d.features, d.time_col, d.fill)

    def forecast(self, data: Any = None, horizon: int | None = None):
        """The ``horizon`` (default: the run's) steps after the end of a history (see
        :meth:`history_series`), as a DataFrame: ``step`` 1..H, one column per target named as it, and
        the time column's future dates when the history's time column has a regular frequency."""
        import pandas as pd

        hist = self.history_series(data)
        S = self.config.data.seq_length
        if len(hist.values) < S:
            raise DataError(f"the history has {len(hist.values)} rows; this run needs its last "
                            f"seq_length={S} rows to forecast")
        pred = self.predict(hist.values[None, -S:], horizon)[0]  # (H, T)
        out = pd.DataFrame({"step": np.arange(1, len(pred) + 1)})
        if hist.time is not None and hist.freq:
            out[self.config.data.time_col] = pd.date_range(hist.time[-1], periods=len(pred) + 1, freq=hist.freq)[1:]
        for j, name in enumerate(hist.columns[:hist.n_targets]):
            out[name] = pred[:, j]
        return out

    # ---- persistence ------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write the run directory: model.safetensors, config.json (config, scaler, sizes, version),
        history.json, and series.csv for a CSV/DataFrame series."""
        model = self._fitted()
        self._save_series(directory)
        return save_run(directory, model.state_dict(), self._meta(), self.history)

    def _meta(self) -> dict:
        """The content of the run's config.json."""
        return {"rnnkit_version": __version__, "config": self.config.to_dict(),
                "scaler": self.scaler.to_dict(), "io": self._io,
                "series": {"columns": list(self.series.columns), "n_targets": self.series.n_targets,
                           "points": len(self.series.values), "freq": self.series.freq}}

    def _save_series(self, directory: str | Path) -> None:
        if self.config.data.source == "csv":
            write_csv(self.series, Path(directory) / SERIES, self.config.data.time_col)

    @classmethod
    def resume(cls, directory: str | Path, log: Callable[[str], None] | None = print,
               progress: bool | None = None, device: str | torch.device = "auto") -> "Forecaster":
        """Continue training the run in ``directory`` from its last checkpoint (from the start if it
        has none), with its saved settings and series, and save it there. The final weights are
        bitwise those of an uninterrupted run (CPU, the same number of processes)."""
        f = cls(read_config(directory))
        f.series = f._run_series(directory)
        d = f.config.data
        f._train(chronological_split(len(f.series.values), d.seq_length, d.horizon, d.train_ratio, d.val_ratio),
                 log, progress, run_dir=directory, resume=True, device=device)
        return f

    @classmethod
    def load(cls, directory: str | Path) -> "Forecaster":
        """Rebuild a saved run from its directory alone (no unpickling)."""
        meta, state, history = load_run(directory)
        try:
            f = cls(RunConfig.from_dict(meta["config"]))
            f.scaler = Scaler.from_dict(meta["scaler"])
            io = meta["io"]
            f.model = f._build(int(io["input_size"]), int(io["output_size"]), int(io["n_targets"]),
                               int(io.get("linear_window", 0)))
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
        f.series = f._run_series(directory)
        return f

    @classmethod
    def from_seed(cls, path: str | Path) -> "Forecaster":
        """The seed's trained ``rnn_custom_model.pth`` as a fitted Forecaster with the seed's settings
        (preset "seed", the file's hidden size); loaded without unpickling any object, see
        :func:`rnnkit.runs.load_seed_checkpoint`."""
        model = load_seed_checkpoint(path)
        if (model.input_size, model.output_size) != (1, 1):
            raise RunError(f"{path} is a CustomRNN({model.input_size}, {model.hidden_size}, {model.output_size}); the "
                           f"seed's wave needs input and output size 1 (give the seed's rnn_custom_model.pth)")
        f = cls(preset="seed", hidden_size=model.hidden_size)
        f.series = load_series(f.config.data)
        f.config = dataclasses.replace(f.config, data=resolve_data(f.config.data, f.series))
        f.scaler = Scaler.fit(f.series.values, f.config.data.scaling)  # "none": the seed does not scale
        f.model = f._build(1, 1, 1)
        f.model.load_state_dict(model.state_dict(), strict=True)
        f.model.eval()
        return f

    def _run_series(self, directory: str | Path) -> TableSeries:
        """The series a run was trained on: its series.csv copy, or the generated wave."""
        d = self.config.data
        if d.source == "csv":
            path = Path(directory) / SERIES
            if not path.exists():
                raise RunError(f"{path} is missing; retrain with `rnnkit train --out {directory}`")
            return read_csv(path, d.target, d.features, d.time_col)
        return load_series(d)
