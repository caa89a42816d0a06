"""The Python API: :class:`Forecaster` (fit / evaluate / forecast / backtest / save / load). The CLI is a
thin layer over it.

    import rnnkit
    f = rnnkit.Forecaster(cell="gru", hidden_size=64, epochs=30).fit()   # the seed's combined wave
    f.evaluate()                      # {'mse': ..., 'mae': ..., 'rmse': ..., 'smape': ..., 'mase': ...}
    f.save("runs/nb")
    g = rnnkit.Forecaster.load("runs/nb")
    g.predict(window)                 # window: (seq_length,) or (N, seq_length[, features]) array

    # a real series: a CSV path, a DataFrame, a pandas Series or an array; 12 steps ahead
    f = rnnkit.Forecaster(horizon=12).fit("examples/airline_passengers.csv", target="passengers",
                                          time_col="month")
    f.evaluate(baselines=True)        # + naive, seasonal naive and linear AR on the same windows
    f.forecast()                      # DataFrame: step 1..12, month (as the file writes it), passengers
    f.backtest(folds=3, refit=True)   # rolling origin

    # many series in the long format: one model over all of them
    f = rnnkit.Forecaster(horizon=6).fit(df, target="y", time_col="ds", id_col="unique_id")
    f.forecast()                      # DataFrame: unique_id, ds, step, y

A table's run keeps two models: the *test model*, trained without the test part (what ``evaluate``,
``backtest`` and the plots score), and the model that forecasts, trained again on every point for
the epochs that validation chose (``refit``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import __version__, distributed
from .config import CSV_PRESET, RunConfig, resolve
from .csvdata import Panel, TableSeries, as_frame, frame_panel, future_values, names, read_csv, write_csv
from .data import (Scaler, Split, Windows, load_series, make_loaders, resolve_data, short_windows, split_panel,
                   split_windows, window_places)
from .errors import ConfigError, DataError, RunError, ShapeError
from .evaluate import backtest as run_backtest
from .evaluate import report, ridge_ar
from .intervals import Calibration, level_name, parse_levels
from .models import build_model, init_linear_skip
from .runs import (BACKTEST, CHECKPOINT, CONFIG, HISTORY, METRICS, PLOTS, REFIT_CHECKPOINT, TEST_WEIGHTS, WEIGHTS,
                   begin_run, load_checkpoint, load_run, load_seed_checkpoint, load_weights, meta_digest, read_config,
                   read_json, read_meta, save_checkpoint, save_run, save_weights, write_json)
from .train import auto_epochs
from .train import extend as extend_checkpoint
from .train import fit as train_model

SPLITS = ("train", "val", "test")
SERIES = "series.csv"  # a table's run keeps the series it was trained on, so test/backtest need no outside file
MIN_BATCHES = 10  # a table's training epoch is at least this many batches (its windows repeated)


class Forecaster:
    """A forecaster of the next value(s) of a series, or of many series with one model: data, model and
    training from one RunConfig.

    ``Forecaster(config=None, preset=None, **settings)``: settings are any field of DataConfig,
    ModelConfig or TrainConfig by name (``source``, ``seq_length``, ``horizon``, ``strategy``,
    ``cell``, ``hidden_size``, ``epochs``, ``lr``, ...), applied over ``config`` (or over the
    defaults / the named preset; a table given to :meth:`fit` takes the "csv" preset).

    After :meth:`fit` (or :meth:`load`): ``panel`` (the series trained on; ``series`` the first),
    ``model`` (the nn.Module that forecasts) and ``scalers`` (one per series), ``test_model`` and
    ``test_scalers`` (trained without the test part; the same objects where there is no refit),
    ``history`` (per-epoch losses, the refit's under "refit"); ``config`` holds the resolved
    settings (seq_length and season made concrete).
    """

    def __init__(self, config: RunConfig | None = None, *, preset: str | None = None, **settings: Any) -> None:
        if config is not None and preset is not None:
            raise ConfigError("give either a config or a preset, not both")
        base = config if config is not None else resolve(preset)
        self.config = base.override(**settings).validate()
        self._csv_defaults = config is None and preset is None  # fit(table) may switch to the csv preset
        self._settings = settings
        self.model: torch.nn.Module | None = None
        self.test_model: torch.nn.Module | None = None
        self.scalers: list[Scaler] | None = None
        self.test_scalers: list[Scaler] | None = None
        self._calibrations: dict = {}  # levels -> (Calibration, scales): see calibration()
        self.panel: Panel | None = None
        self.history: dict | None = None

    def __repr__(self) -> str:
        m = self.config.model
        what = "CustomRNN" if m.model == "custom" else f"{m.cell.upper()}"
        series = "" if self.panel is None or len(self.panel) == 1 else f", {len(self.panel)} series"
        return (f"Forecaster({what}, hidden_size={m.hidden_size}, num_layers={m.num_layers}{series}, "
                f"{'fitted' if self.model is not None else 'not fitted'})")

    @property
    def series(self) -> TableSeries | None:
        """The series trained on (the first one of a panel)."""
        return None if self.panel is None else self.panel.series[0]

    @property
    def scaler(self) -> Scaler | None:
        """The test model's scaler of the first series (the only one of a single series)."""
        return None if self.test_scalers is None else self.test_scalers[0]

    # ---- training ---------------------------------------------------------------------------

    def fit(self, data: Any = None, *, target: str | list | None = None, features: str | list | None = None,
            time_col: str | None = None, id_col: str | None = None, date_format: str | None = None,
            fill: str | None = None, log: Callable[[str], None] | None = print, progress: bool | None = None,
            run_dir: str | Path | None = None, force: bool = False,
            device: str | torch.device = "auto") -> "Forecaster":
        """Build the data and the model from the config and train; returns self.

        data: None (the config's series: a seed wave or its ``csv``), a CSV path, a pandas DataFrame
        (long format with ``id_col``: one series per id), a pandas Series (its name the target) or an
        array (N,) / (N, F) (columns "0", "1", ...; target "0" by default). A DataFrame's or Series'
        DatetimeIndex / PeriodIndex is its time column unless ``time_col`` names one.
        target / features (column names, a list or "a,b"), time_col, id_col, date_format and fill
        override the config's. log: where the epoch lines and notes go (None: silent). progress: tqdm
        bar (None: on a terminal).
        run_dir: train into this run directory: config.json first, a checkpoint every
        ``checkpoint_every`` epochs (see :meth:`resume`), the saved run at the end; a directory that
        already holds a run is refused unless ``force`` (which replaces it).
        device: where to train: "auto" (CUDA when torch sees a device, else the CPU), "cpu", "cuda" or a
        torch.device; the trained model is returned on the CPU. Under torchrun (a process group is up)
        it trains with DistributedDataParallel and only rank 0 writes ``run_dir``.
        """
        given = {"target": target, "features": features, "time_col": time_col, "id_col": id_col,
                 "date_format": date_format, "fill": fill}
        settings = {k: ",".join(names(v)) if k in ("target", "features") and v is not None else v
                    for k, v in given.items()}
        table = None
        if isinstance(data, (str, Path)):
            settings.update(source="csv", csv=str(data))
        elif data is not None:
            table, tgt, feats, tcol = as_frame(data, settings["target"] or self.config.data.target,
                                               settings["features"] or self.config.data.features,
                                               settings["time_col"] or self.config.data.time_col)
            settings.update(source="csv", csv="", target=",".join(names(tgt)), features=",".join(names(feats)),
                            time_col=tcol)
        base = self.config
        if self._csv_defaults and "source" in settings and self.config.data.source != "csv":
            base = resolve(CSV_PRESET).override(**self._settings)
        cfg = base.override(**settings)
        if table is None:
            cfg.validate()
        panel = load_series(cfg.data, table)
        cfg = dataclasses.replace(cfg, data=resolve_data(cfg.data, panel)).validate()
        self.config, self.panel = cfg, panel
        self._train(log, progress, run_dir=run_dir, force=force, device=device)
        return self

    def splits(self, whole: bool = False) -> list[Split]:
        """Each series' split: the test model's (``whole``: the refit's, every point training)."""
        if self.panel is None:
            raise RunError("this Forecaster is not trained yet; call .fit() or Forecaster.load(DIR) first")
        return split_panel(self.panel, self.config.data, whole)

    def split(self) -> Split:
        """The first series' split (the only one of a single series)."""
        return self.splits()[0]

    def refits(self) -> bool:
        """Whether the model that forecasts is trained again on every point ("auto": for tables)."""
        r = self.config.train.refit
        return r == "yes" or (r == "auto" and short_windows(self.config.data))

    def _values(self) -> list[np.ndarray]:
        return [s.values for s in self.panel.series]

    def _windows(self, splits: list[Split], scalers: list[Scaler] | None = None) -> Windows:
        d = self.config.data
        return split_windows(self._values(), splits, scalers or d.scaling, self.panel.n_targets, d.season,
                             self.panel.n_future)

    def _train(self, log: Callable[[str], None] | None = None, progress: bool | None = False,
               run_dir: str | Path | None = None, force: bool = False, resume: bool = False,
               device: str | torch.device = "cpu", splits: list[Split] | None = None) -> None:
        """Train the test model on its splits (or ``splits``), then (``refits``) the model that
        forecasts on every point; into ``run_dir`` when given (``resume``: from its files and last
        checkpoint)."""
        cfg = self.config
        if self.panel.n_future and cfg.model.model == "custom":
            raise ConfigError("--model custom reads no features known ahead; drop --future-features and --calendar, "
                              "or use --model recurrent")
        device = distributed.resolve_device(device)
        main = distributed.is_main()  # under DDP only rank 0 writes the run directory and speaks
        log = log if main else None
        windows = self._windows(splits or self.splits())
        final = self._windows(self.splits(whole=True)) if self.refits() else None
        self.test_scalers = list(windows.scalers)
        self.scalers = list(final.scalers) if final is not None else self.test_scalers
        x, y = windows.train.tensors[:2]
        steps = 1 if cfg.data.strategy == "recursive" else y.shape[1]  # recursive: one step, fed back
        self._io = self._sizes(x.shape[-1], steps * y.shape[2], y.shape[2], self.panel.n_future)
        meta = self._meta()
        if run_dir is not None and not resume and main:
            begin_run(run_dir, meta, force)
            self._save_series(run_dir)
        elif run_dir is not None and resume and meta_digest(meta) != meta_digest(read_meta(run_dir)):
            raise RunError(f"{Path(run_dir) / 'config.json'} no longer matches what its settings and data give "
                           f"(edited, or another rnnkit version); retrain with --force")
        if log is not None and short_windows(cfg.data) and cfg.data.val_ratio and not len(windows.val):
            log(f"note: the series are too short to hold out validation windows; training for a fixed budget "
                f"of epochs, without early stopping")
        done = run_dir is not None and resume and (Path(run_dir) / TEST_WEIGHTS).exists()
        if done:  # the test model was finished before the run stopped
            self.test_model = self._build_model()
            self.test_model.load_state_dict(load_weights(Path(run_dir) / TEST_WEIGHTS, meta))
            self.history = read_json(Path(run_dir) / HISTORY)
        else:
            self.test_model, self.history = self._phase("test", windows, None, log, progress, run_dir, meta,
                                                        resume, device)
            if run_dir is not None and main and final is not None:  # kept, should the refit be stopped
                save_weights(Path(run_dir) / TEST_WEIGHTS, self.test_model.state_dict(), meta)
                write_json(Path(run_dir) / HISTORY, self.history)
        self.model = self.test_model
        self._calibrations = {}
        if final is not None:
            epochs = self.history["best_epoch"] if len(windows.val) else None
            if log is not None:
                log(f"refit on all {sum(len(s.values) for s in self.panel.series)} points"
                    + (f" for the {epochs} epochs validation chose" if epochs else ""))
            self.model, self.history["refit"] = self._phase("final", final, epochs, log, progress, run_dir, meta,
                                                            resume, device)
        if run_dir is not None and main:
            self.save(run_dir)

    def _phase(self, phase: str, windows: Windows, epochs: int | None, log, progress, run_dir, meta: dict,
               resume: bool, device) -> tuple[torch.nn.Module, dict]:
        """Train one model on ``windows``: the test model ("test", early stopping on the validation
        windows) or the model that forecasts ("final": ``epochs``, or the config's / the automatic
        budget, without validation). Returns the model (on the CPU) and its history."""
        cfg = self.config
        if cfg.data.strategy == "recursive":  # train one step ahead; forecasts are fed back
            windows = windows._replace(train=_one_step(windows.train), val=_one_step(windows.val))
        if short_windows(cfg.data):  # a few windows: an epoch goes over them several times
            windows = windows._replace(train=_repeated(windows.train, cfg.data.batch_size * MIN_BATCHES))
        loaders = make_loaders(windows, cfg.data.batch_size, cfg.train.seed)
        torch.manual_seed(cfg.train.seed)  # the initial weights
        model = self._build_model()
        if self._io["linear_window"] and not cfg.model.relative:  # start from the ridge AR of the same windows
            for member in getattr(model, "members", [model]):
                span = lambda ds: _last_steps(ds, member.linear_window, getattr(member, "ahead", 0))  # noqa: E731 (what it reads)
                weights, _ = ridge_ar(span(windows.train), span(windows.val), residual=cfg.model.residual)
                init_linear_skip(member, torch.as_tensor(weights))
        train_cfg = dataclasses.replace(cfg.train, loss_steps=self.loss_steps(),
                                        epochs=epochs or cfg.train.epochs or
                                        auto_epochs(len(windows.train), cfg.data.batch_size))
        checkpoint = start = None
        if run_dir is not None:
            name = CHECKPOINT if phase == "test" else REFIT_CHECKPOINT  # the test model's is kept, see extend
            if resume:
                found = load_checkpoint(run_dir, meta, name)
                if found is not None and found[1].get("phase", "test") == phase:
                    start = found
            checkpoint = lambda tensors, state: save_checkpoint(run_dir, meta, tensors,  # noqa: E731
                                                                {**state, "phase": phase}, name)
        model.to(device)
        history = train_model(model, loaders.train, loaders.val, train_cfg, log=log, progress=progress,
                              checkpoint=checkpoint, resume=start)
        return model.cpu(), history  # inference and saving run on the CPU

    def refit(self, splits: list[Split] | Split) -> "Forecaster":
        """A new Forecaster with this one's config and series whose test model is trained (silently)
        on ``splits`` (one per series; a Split for a single series)."""
        g = Forecaster(dataclasses.replace(self.config, train=dataclasses.replace(self.config.train, refit="no")))
        g.panel = self.panel
        g._train(splits=[splits] if isinstance(splits, Split) else list(splits))
        return g

    def loss_steps(self) -> str:
        """The training target the config resolves to: "all" or "last" ("auto": all unless custom or a
        table's short windows)."""
        steps = self.config.train.loss_steps
        if steps == "auto":
            return "last" if self.config.model.model == "custom" or short_windows(self.config.data) else "all"
        if steps == "all" and short_windows(self.config.data):
            raise ConfigError("--loss-steps all needs whole windows; a table's short windows train the last step "
                              "(--loss-steps last)")
        return steps

    def _sizes(self, input_size: int, output_size: int, n_targets: int, n_future: int = 0) -> dict:
        m = self.config.model
        on = m.linear_skip == "yes" or (m.linear_skip == "auto" and self.config.data.source == "csv")
        linear_window = self.config.data.seq_length if on and m.model == "recurrent" else 0
        return {"input_size": input_size, "output_size": output_size, "n_targets": n_targets,
                "linear_window": linear_window, "n_future": n_future}

    def _build_model(self) -> torch.nn.Module:
        m, io = self.config.model, self._io
        return build_model(m.model, m.cell, io["input_size"], m.hidden_size, io["output_size"], m.num_layers,
                           m.dropout, m.residual, io["n_targets"], io["linear_window"], m.relative, m.members,
                           io.get("n_future", 0))

    def _fitted(self) -> torch.nn.Module:
        if self.model is None:
            raise RunError("this Forecaster is not trained yet; call .fit() or Forecaster.load(DIR) first")
        return self.model

    # ---- inference --------------------------------------------------------------------------

    @torch.no_grad()
    def _forecast(self, x_scaled: torch.Tensor, horizon: int | None = None, model: torch.nn.Module | None = None
                  ) -> np.ndarray:
        """Scaled forecasts (N, horizon, targets) after each scaled window x (N, S, F): one pass of the
        direct head (its first ``horizon`` steps), or one step at a time fed back (recursive)."""
        model = (model or self._fitted()).eval()
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

    def windows(self) -> Windows:
        """The test model's windows (scaled with its scalers)."""
        self._fitted()
        return self._windows(self.splits(), self.test_scalers)

    def window_predictions(self, windows: Windows, part: str = "test") -> tuple[np.ndarray, np.ndarray]:
        """(true, predicted) of the test model on a part's scaled windows, each (N, horizon, targets), in
        original units (a masked target's "true" value is meaningless)."""
        x, y = getattr(windows, part).tensors[:2]
        pred = self._forecast(x, y.shape[1], self.test_model)
        true = y.double().numpy()
        cols = list(range(y.shape[2]))
        places = window_places(windows.splits, part)  # (W, 2): series, first target position
        out_true, out_pred = np.empty_like(true), np.empty_like(pred)
        for i in np.unique(places[:, 0]):
            rows = np.flatnonzero(places[:, 0] == i)
            at = _steps(places[rows, 1], y.shape[1])  # (W_i, H) positions of the targets
            out_true[rows] = windows.scalers[i].inverse(true[rows], cols, at)
            out_pred[rows] = windows.scalers[i].inverse(pred[rows], cols, at)
        return out_true, out_pred

    def predictions(self, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
        """(true, predicted) of every window of a part of the test model's splits, each
        (N, horizon, targets), original units."""
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r} (use one of: {', '.join(SPLITS)})")
        return self.window_predictions(self.windows(), split)

    def evaluate(self, split: str = "test", season: int | None = None, baselines: bool = False,
                 levels: Any = None) -> dict:
        """MSE, MAE, RMSE, sMAPE and MASE of a split (default: test), in the data's original units, of the
        test model; MASE's scale is each series' training part's seasonal-naive error (``season``,
        default: the run's), averaged over the series. baselines=True (test split only): also naive,
        seasonal naive and linear AR on the same windows, under "baselines", with "season", "windows"
        and "horizon" (and, for a panel, "series": each series' metrics). ``levels`` (test split;
        default: the run's, "80,95" or (80, 95); "" none): the prediction intervals' scores under
        "intervals" (see :func:`rnnkit.evaluate.report`)."""
        from .evaluate import metrics

        if split == "test":
            out = report(self, self.splits(), season, baselines, levels)
            if baselines:
                return out
            return {k: out[k] for k in ("mse", "mae", "rmse", "smape", "mase", "intervals") if k in out}
        if baselines:
            raise ConfigError("baselines are reported on the test split only")
        return metrics(*self.predictions(split))

    def backtest(self, folds: int = 3, refit: bool = False, fold_size: int | None = None,
                 season: int | None = None, log: Callable[[str], None] | None = None, levels: Any = None) -> dict:
        """Rolling-origin evaluation, one row per fold plus the mean: see :func:`rnnkit.evaluate.backtest`."""
        return run_backtest(self, folds, refit, fold_size, season, log, levels)

    def calibration(self, levels: Any = None) -> tuple[Calibration, np.ndarray]:
        """The prediction intervals of the forecasts: each level's offsets from the forecast per step
        and target, in units of each series' MASE scale, and those scales (series, targets). They come
        from the test model's errors on the windows it did not train on (validation and test; the
        training windows where a series is too short for either), which stand for the errors of the
        model that forecasts: trained the same way on all of it."""
        from .evaluate import calibrate_part, part_forecasts, series_scales

        levels = parse_levels(self.config.data.levels if levels is None else levels)
        key = tuple(levels)
        if key not in self._calibrations:
            splits, m = self.splits(), self.config.data.season or 1
            windows = self.windows()
            parts = [p for p in ("val", "test") if len(getattr(windows, p))] or ["train"]
            found = [part_forecasts(self, windows, splits, p, m, baselines=False) for p in parts]
            held = found[0] if len(found) == 1 else found[0]._replace(
                true=np.concatenate([p.true for p in found]), places=np.concatenate([p.places for p in found]),
                preds={"model": np.concatenate([p.preds["model"] for p in found])})
            scales = series_scales(self, splits, m)
            self._calibrations[key] = calibrate_part(held, scales, "model", levels), scales
        return self._calibrations[key]

    def predict(self, x: Any, horizon: int | None = None, series: int = 0, at: Any = None) -> np.ndarray:
        """Forecast after each window with the model that forecasts. x, original units: (seq_length,) one
        univariate window, (N, seq_length) univariate windows, or (N, seq_length, features), of series
        number ``series`` of the panel (its scaler). ``at``: the grid position of each window's first
        forecast step (an int or (N,)), which a seasonal scaler needs (default: right after the
        series' end). Returns (N, horizon, targets)."""
        self._fitted()
        if self.panel.n_future:
            raise ConfigError("this run reads features known ahead at the forecast steps, which windows alone do not "
                              "hold; use forecast(data, future=...)")
        a = np.asarray(x, dtype=np.float64)
        F = self._io["input_size"]
        if a.ndim == 1:
            a = a[None, :, None]
        elif a.ndim == 2 and F == 1:
            a = a[:, :, None]
        if a.ndim != 3 or a.shape[2] != F or a.shape[1] < 1:
            raise ShapeError(f"predict expects windows of shape (N, seq_length, {F}) (or (N, seq_length) / "
                             f"(seq_length,) for one feature), got {np.shape(x)}")
        at = np.broadcast_to(len(self.panel.series[series].values) if at is None else np.asarray(at), (len(a),))
        return self._predict_windows(a, [self.scalers[series]] * len(a), at.astype(np.int64), horizon)

    def _predict_windows(self, a: np.ndarray, scalers: list[Scaler], at: np.ndarray, horizon: int | None,
                         ahead: np.ndarray | None = None) -> np.ndarray:
        """Forecasts (N, H, T) in original units after windows a (N, S, F), each scaled by its scaler, whose
        first forecast steps are at grid positions ``at`` (N,); ``ahead`` (N, trained horizon, F): the
        forecast steps' rows, of which the features known ahead are read (a run with them)."""
        S = a.shape[1]
        if ahead is not None:
            a = np.concatenate([a, ahead], axis=1)  # (N, S + H, F), scaled as one stretch of the series
        z = np.stack([sc.transform(w, int(p) - S) for w, sc, p in zip(a, scalers, at)])
        if ahead is not None:
            z[:, S:, :z.shape[2] - self.panel.n_future] = 0  # (as the training windows hold them)
        pred = self._forecast(torch.as_tensor(z, dtype=torch.float32), horizon)  # (N, H, T)
        steps, cols = _steps(at, pred.shape[1]), list(range(pred.shape[2]))
        return np.stack([sc.inverse(p, cols, q) for p, sc, q in zip(pred, scalers, steps)])

    def history_series(self, data: Any = None) -> Panel:
        """A history to forecast from, read with the run's columns: None (the series trained on), a CSV
        path, a DataFrame, a Series or an array; it may be longer than the training series."""
        self._fitted()
        d = self.config.data
        if data is None:
            return self.panel
        if isinstance(data, Panel):
            return data
        if isinstance(data, TableSeries):
            return Panel((data,))
        if isinstance(data, (str, Path)):
            return read_csv(data, d.target, d.features, d.time_col, d.fill, d.id_col, d.date_format, d.sep,
                            d.future_features, d.calendar)
        return frame_panel(data, d.target, d.features, d.time_col, d.fill, id_col=d.id_col, date_format=d.date_format,
                           future_features=d.future_features, calendar=d.calendar)

    def forecast(self, data: Any = None, horizon: int | None = None, log: Callable[[str], None] | None = None,
                 levels: Any = None, future: Any = None):
        """The ``horizon`` (default: the run's) steps after the end of each series of a history (see
        :meth:`history_series`), as a DataFrame: the id column (a panel), the time column (continued in
        the history's own form: years after 1934 are 1935, ...; months stay "YYYY-MM"), ``step`` 1..H
        and one column per target, named as it; with ``levels`` (default: the run's; "" none) each
        target's prediction intervals beside it, ``{target}_lo80``, ``{target}_hi80``, ... (see
        :meth:`calibration`). A history's series are matched to the run's by id (ids the run was not
        trained on are an error); ``log`` hears which of the run's ids the history lacks. ``future``: a
        run with ``future_features`` reads their values at the forecast steps from this CSV path or
        DataFrame (see :func:`rnnkit.csvdata.future_values`); the calendar is made from the times."""
        import pandas as pd

        hist = self.history_series(data)
        d = self.config.data
        index = self._match(hist, log)
        windows = np.stack([_window(s.values, d.seq_length) for s in hist.series])  # (N, S, F)
        # the grid position of each series' first forecast step, on the run's grid of that series
        at = np.array([self._grid_offset(k, s) + len(s.values) for k, s in zip(index, hist.series)])
        ahead = self._ahead(hist, future)
        pred = self._predict_windows(windows, [self.scalers[k] for k in index], at, horizon, ahead)  # (N, H, T)
        N, H = pred.shape[:2]
        out = pd.DataFrame({"step": np.tile(np.arange(1, H + 1), N)})
        if hist.time is not None:
            times = [s.time.future(H) for s in hist.series]
            out.insert(0, d.time_col, times[0].append(times[1:]) if N > 1 else times[0])
        if hist.ids is not None:
            out.insert(0, d.id_col, np.repeat(np.asarray(hist.ids, dtype=object), H))
        cal = None
        if parse_levels(d.levels if levels is None else levels):
            cal, scales = self.calibration(levels)
            scale = np.nan_to_num(scales[index], nan=0.0)[:, None, :]  # (N, 1, T); a constant series: none
            lo, hi = cal.steps(H)  # (levels, H, T)
            lower, upper = pred + lo[:, None] * scale, pred + hi[:, None] * scale  # (levels, N, H, T)
        for j, name in enumerate(hist.columns[:hist.n_targets]):
            out[name] = pred[:, :, j].ravel()
            for k, level in enumerate(cal.levels if cal else ()):
                out[f"{name}_lo{level_name(level)}"] = lower[k, :, :, j].ravel()
                out[f"{name}_hi{level_name(level)}"] = upper[k, :, :, j].ravel()
        return out

    def _known_ahead(self) -> tuple[list[str], int]:
        """The run's future features (names) and its number of calendar columns: the last columns of
        its series, in that order."""
        p, d = self.panel, self.config.data
        ahead = list(p.columns[len(p.columns) - p.n_future:]) if p.n_future else []
        future = [c for c in ahead if c in names(d.future_features)]
        return future, len(ahead) - len(future)

    def _ahead(self, hist: Panel, future: Any) -> np.ndarray | None:
        """The rows (N, trained horizon, F) of the forecast steps after each series of ``hist``: the
        future features' values from ``future``, the calendar from the times, the other columns 0;
        None for a run without features known ahead."""
        d = self.config.data
        cols, calendar = self._known_ahead()
        if future is not None and not cols:
            raise ConfigError("this run reads no future features (--future-features); drop --future")
        if not self.panel.n_future:
            return None
        H, F = d.horizon, len(self.panel.columns)
        out = np.zeros((len(hist), H, F))
        if cols:
            if future is None:
                raise DataError(f"this run reads {', '.join(cols)} at the forecast steps; give their values at the "
                                f"{H} steps after the history with --future FILE.csv")
            first = F - self.panel.n_future
            out[:, :, first:first + len(cols)] = future_values(hist, future, H, cols, d.time_col, d.id_col,
                                                               d.date_format, d.sep)
        if calendar:
            for i, s in enumerate(hist.series):
                n = len(s.values)
                out[i, :, F - calendar:] = np.column_stack(list(s.time.calendar(n, n + H).values()))
        return out

    def _match(self, hist: Panel, log) -> list[int]:
        """For each series of a history, the index of the run's series it continues."""
        run = self.panel
        if hist.ids is None or run.ids is None:
            if (hist.ids is None) != (run.ids is None) or len(hist) != len(run):
                raise DataError("the history's series do not match the run's: give the same --id-col table form "
                                "the run was trained on")
            return list(range(len(hist)))
        where = {v: k for k, v in enumerate(run.ids)}
        unknown = [v for v in hist.ids if v not in where]
        if unknown:
            shown = ", ".join(map(repr, unknown[:5])) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            raise DataError(f"ids {shown} are not in the run (it forecasts the series it was trained on); "
                            f"train a run that includes them")
        lacking = len(run) - len(set(hist.ids))
        if lacking and log is not None:
            log(f"note: the history has {len(hist)} of the run's {len(run)} ids; forecasting those")
        return [where[v] for v in hist.ids]

    def _grid_offset(self, k: int, s: TableSeries) -> int:
        """The grid position, on run series k's grid, of history series s's first point (0 without times)."""
        mine = self.panel.series[k].time
        if mine is None or s.time is None:
            return 0
        return mine.position_of(s.time)

    def export(self, path: str | Path, check: bool = True) -> Path:
        """Write the model that forecasts to ``path`` as ONNX (:func:`rnnkit.export.to_onnx`: ONNX's
        own GRU/LSTM/RNN operators, any batch, windows of at least seq_length steps), checked with onnxruntime where
        ``check``. Its input ``x`` (batch, length, features) is windows scaled as the run scales
        them, its output ``y`` (batch, horizon * targets, horizon-major) the forecasts in the same
        units; the model's metadata holds what scaling needs: "rnnkit.scalers" (one per series, as
        :class:`rnnkit.data.Scaler` reads them), "rnnkit.config" and "rnnkit.series" (JSON)."""
        import json

        import onnx

        from .export import to_onnx
        from .runs import write_bytes

        model = self._fitted()
        path = Path(path)
        with _scratch(path) as tmp:
            ahead = self.config.data.horizon if self._io.get("n_future") else 0  # (x holds the horizon's rows too)
            to_onnx(model, tmp, self._io["input_size"], check=check, min_length=self.config.data.seq_length + ahead)
            graph = onnx.load(str(tmp))
        meta = self._meta()
        onnx.helper.set_model_props(graph, {"rnnkit.version": __version__,
                                            "rnnkit.scalers": json.dumps([sc.to_dict() for sc in self.scalers]),
                                            "rnnkit.config": json.dumps(meta["config"]),
                                            "rnnkit.series": json.dumps(meta["series"])})
        write_bytes(path, graph.SerializeToString())
        return path

    # ---- persistence ------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write the run directory: model.safetensors, config.json (config, scalers, sizes, version),
        history.json, test_model.safetensors when the forecasting model was refit, and series.csv
        for a table."""
        model = self._fitted()
        directory = Path(directory)
        self._save_series(directory)
        meta = self._meta()
        if self.test_model is not model:
            save_weights(directory / TEST_WEIGHTS, self.test_model.state_dict(), meta)
        return save_run(directory, model.state_dict(), meta, self.history)

    def _meta(self) -> dict:
        """The content of the run's config.json."""
        p = self.panel
        meta = {"rnnkit_version": __version__, "config": self.config.to_dict(),
                "scalers": [s.to_dict() for s in self.test_scalers], "io": self._io,
                "series": {"columns": list(p.columns), "n_targets": p.n_targets, "count": len(p),
                           "points": sum(len(s.values) for s in p.series),
                           "time": p.time.to_dict() if p.time is not None else None}}
        if self.scalers is not self.test_scalers:
            meta["final_scalers"] = [s.to_dict() for s in self.scalers]
        return meta

    def _save_series(self, directory: str | Path) -> None:
        if self.config.data.source == "csv":
            d = self.config.data
            future, calendar = self._known_ahead()
            keep = len(self.panel.columns) - calendar  # (the calendar is made again from the times)
            write_csv(self.panel, Path(directory) / SERIES, d.time_col, d.id_col, keep)

    @classmethod
    def resume(cls, directory: str | Path, log: Callable[[str], None] | None = print,
               progress: bool | None = None, device: str | torch.device = "auto",
               epochs: int | None = None) -> "Forecaster":
        """Continue training the run in ``directory`` from its last checkpoint (from the start if it
        has none), with its saved settings and series, and save it there. The final weights are
        bitwise those of an uninterrupted run (CPU, the same number of processes).
        ``epochs``: train until this epoch instead of the run's own ``epochs``, a finished run
        included (see :func:`extend`)."""
        if epochs is not None:
            extend(directory, epochs)
        f = cls(read_config(directory))
        f.panel = f._run_series(directory)
        f._train(log, progress, run_dir=directory, resume=True, device=device)
        return f

    @classmethod
    def load(cls, directory: str | Path) -> "Forecaster":
        """Rebuild a saved run from its directory alone (no unpickling)."""
        meta, state, history, test_state = load_run(directory)
        try:
            f = cls(RunConfig.from_dict(meta["config"]))
            f.test_scalers = [Scaler.from_dict(s) for s in meta["scalers"]]
            f.scalers = [Scaler.from_dict(s) for s in meta["final_scalers"]] if "final_scalers" in meta \
                else f.test_scalers
            io = meta["io"]
            f._io = {k: int(io.get(k, 0)) for k in ("input_size", "output_size", "n_targets", "linear_window",
                                                    "n_future")}
            f.model = f._build_model()
            f.test_model = f._build_model() if test_state is not None else f.model
        except (ConfigError, KeyError, TypeError, ValueError) as e:
            raise RunError(f"{Path(directory) / 'config.json'} is not a valid rnnkit run config ({e}); "
                           f"retrain with `rnnkit train --out {directory}`") from None
        for model, weights in ((f.model, state), (f.test_model, test_state)):
            if weights is None:
                continue
            try:
                model.load_state_dict(weights, strict=True)
            except RuntimeError as e:
                first = str(e).strip().splitlines()[0]
                raise RunError(f"the weights in {directory} do not match its config.json ({first}); "
                               f"retrain the run") from None
            model.eval()
        f.history = history
        f.panel = f._run_series(directory)
        if len(f.test_scalers) != len(f.panel) or len(f.scalers) != len(f.panel):
            raise RunError(f"{Path(directory) / 'config.json'} has scalers for {len(f.test_scalers)} series but "
                           f"{Path(directory) / SERIES} holds {len(f.panel)}; retrain the run")
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
        f.panel = load_series(f.config.data)
        f.config = dataclasses.replace(f.config, data=resolve_data(f.config.data, f.panel))
        f.test_scalers = f.scalers = [Scaler.fit(f.series.values, f.config.data.scaling)]  # "none": the seed's
        f._io = f._sizes(1, 1, 1)
        f.model = f.test_model = f._build_model()
        f.model.load_state_dict(model.state_dict(), strict=True)
        f.model.eval()
        return f

    def _run_series(self, directory: str | Path) -> Panel:
        """The series a run was trained on: its series.csv copy, or the generated wave."""
        d = self.config.data
        if d.source == "csv":
            path = Path(directory) / SERIES
            if not path.exists():
                raise RunError(f"{path} is missing; retrain with `rnnkit train --out {directory}`")
            return read_csv(path, d.target, d.features, d.time_col, "none", d.id_col, d.date_format,
                            future_features=d.future_features, calendar=d.calendar)
        return load_series(d)


def extend(directory: str | Path, epochs: int) -> int | None:
    """Make the run in ``directory`` train until epoch ``epochs`` when it is resumed, a finished run or
    one that stopped early included: its config's ``epochs`` becomes ``epochs`` and its checkpoint
    (the test model's training, which validation watches) goes on from its epoch as
    :func:`rnnkit.train.extend` says; a table's model that forecasts is then refit anew, for the epochs
    validation chooses. The files of the model the run had (weights, history, metrics, plots) are
    removed: they no longer describe it; until training ends, the run loads its checkpoint's best
    weights. Returns the epoch it goes on from, or None where the run already trains until
    ``epochs`` (nothing changed)."""
    directory = Path(directory)
    meta = read_meta(directory)
    cfg = read_config(directory)
    cfg.override(epochs=epochs).validate()
    found = load_checkpoint(directory, meta)
    if found is None:
        if (directory / WEIGHTS).exists():
            raise RunError(f"{directory} has no checkpoint to train further from; train a new run with --epochs "
                           f"{epochs}")
        done, stopped = 0, False  # stopped before its first epoch ended: it starts again
    elif found[1].get("phase", "test") != "test":
        raise RunError(f"{directory}'s checkpoint is its refit's (an earlier rnnkit kept no other), so its test "
                       f"model cannot train further; train a new run with --epochs {epochs}")
    else:
        done, stopped = found[1]["loop"]["epoch"], found[1]["history"]["stopped_early"]
    if epochs == cfg.train.epochs and not stopped:
        return None
    if epochs <= done:
        raise ConfigError(f"{directory} has trained {done} epochs; give --epochs above {done} to train it further")
    meta = {**meta, "config": {**meta["config"], "train": {**meta["config"]["train"], "epochs": epochs}}}
    if found is not None:
        save_checkpoint(directory, meta, *extend_checkpoint(found, epochs, cfg.train.schedule))
    for name in (WEIGHTS, TEST_WEIGHTS, REFIT_CHECKPOINT, HISTORY, METRICS, BACKTEST, *PLOTS):
        (directory / name).unlink(missing_ok=True)
    write_json(directory / CONFIG, meta)
    return done


@contextlib.contextmanager
def _scratch(beside: Path):
    """A temporary file path in ``beside``'s directory, removed afterwards."""
    fd, name = tempfile.mkstemp(dir=beside.parent if beside.parent.exists() else None, suffix=".onnx")
    os.close(fd)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def _steps(first: np.ndarray, horizon: int) -> np.ndarray:
    """(N, horizon) grid positions of each forecast's steps from their first positions (N,)."""
    return np.asarray(first, dtype=np.int64)[:, None] + np.arange(horizon)


def _window(values: np.ndarray, length: int) -> np.ndarray:
    """The last ``length`` rows of a series (N, F), the first row repeated before a shorter one."""
    if len(values) >= length:
        return values[-length:]
    return np.concatenate([np.repeat(values[:1], length - len(values), axis=0), values])


def _repeated(ds, least: int):
    """A dataset's windows repeated until there are at least ``least`` of them."""
    from torch.utils.data import TensorDataset

    times = -(-least // max(len(ds), 1))
    if times <= 1:
        return ds
    return TensorDataset(*(t.repeat(times, *[1] * (t.dim() - 1)) for t in ds.tensors))


def _last_steps(ds, steps: int, ahead: int = 0):
    """A dataset of windows cut to the last ``steps`` steps of their past (x without its last ``ahead``
    rows, the horizon's known-ahead ones)."""
    from torch.utils.data import TensorDataset

    x, *rest = ds.tensors
    past = x[:, :x.shape[1] - ahead]
    return ds if past.shape[1] == steps == x.shape[1] else TensorDataset(past[:, -steps:], *rest)


def _one_step(ds):
    """A dataset's windows with their first target step only (recursive training)."""
    from torch.utils.data import TensorDataset

    x, y, *mask = ds.tensors
    return TensorDataset(x, y[:, :1], *(m[:, :1] for m in mask))
