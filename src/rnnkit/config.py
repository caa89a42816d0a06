"""Configuration: one dataclass per concern (data, model, train), a TOML file and CLI-style overrides.

Precedence, lowest first: the dataclass defaults below < a preset (``seed``) < a TOML file < explicit
overrides (CLI flags or ``Forecaster(**kwargs)``). The resolved :class:`RunConfig` is saved in the run
directory as JSON and a run is rebuilt from it alone. An unknown section, key or preset, or a value of
the wrong type or out of range, raises :class:`~rnnkit.errors.ConfigError`.

TOML layout (every key optional)::

    [data]
    source = "combined"
    seq_length = 50
    [model]
    cell = "gru"
    [train]
    epochs = 60
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .intervals import parse_levels

SOURCES = ("combined", "sine", "csv")
SCALINGS = ("standard", "log", "auto", "none")
FILLS = ("none", "interpolate", "ffill")
STRATEGIES = ("direct", "recursive")
MODELS = ("recurrent", "custom")
CELLS = ("rnn", "lstm", "gru")
SCHEDULES = ("cosine", "plateau", "none")
LOSS_STEPS = ("auto", "all", "last")
LOSSES = ("mse", "mae")
DEVICES = ("auto", "cpu", "cuda")  # where to train (a flag of `rnnkit train`, not part of a run's config)


@dataclass
class DataConfig:
    """What series, how it is cut into windows and split, and how it is scaled."""

    source: str = "combined"      # the seed's waves: "combined" = sin+cos+sign(sin), or "sine"; or "csv"
    num_samples: int = 1000       # points in the generated series (seed: 1000)
    csv: str = ""                 # source "csv": the file read at training (the run keeps its own copy)
    target: str = ""              # source "csv": target column(s), comma-separated; also inputs
    features: str = ""            # source "csv": extra input column(s), comma-separated
    future_features: str = ""     # source "csv": input column(s) whose values are known ahead (prices, promotions,
                                  # holidays): the forecast reads their values at the forecast steps
    calendar: bool = False        # source "csv": add the time column's calendar (hour, day of week, time of year;
                                  # sine and cosine) as features known ahead
    time_col: str = ""            # source "csv": time column (dates, quarters or numbers, increasing), optional
    date_format: str = ""         # source "csv": strftime format of the time column's dates where the form is
                                  # ambiguous (e.g. "%d/%m/%Y"); "" = detected
    id_col: str = ""              # source "csv": the series id column of a long table (one series per id, one
                                  # model over all of them); "" = one series
    sep: str = ","                # source "csv": the file's column separator
    fill: str = "none"            # missing values and missing times: "none" (an error naming them),
                                  # "interpolate", "ffill"
    seq_length: int = 0           # input steps per window; 0 = auto: 50 for the waves (seed), for a table
                                  # max(2*season, 2*horizon, 4) but at most 64 and half the (median) series
    horizon: int = 1              # target steps per window (forecast steps)
    levels: str = ""              # prediction intervals' levels in percent, comma-separated ("80,95"; "" = none):
                                  # forecasts get {target}_lo80/_hi80 ..., test and backtest score them
    strategy: str = "direct"      # "direct": the head outputs all horizon steps; "recursive": one step,
                                  # fed back horizon times (needs every input to be a target)
    season: int = 0               # seasonal period (seasonal naive, MASE, seasonal adjustment); 0 = auto from
                                  # the time column: yearly 1, quarterly 4, monthly 12, weekly 52, daily 7,
                                  # hourly 24, half-hourly 48; else 1
    train_ratio: float = 0.8      # first 80% of the windows train (plus validation), the rest test (seed); a
                                  # table's test part is its last max(horizon, 20%) points
    val_ratio: float = 0.1        # this share of the training windows, taken from their end, validates
    batch_size: int = 16          # more, smaller steps learn the jumps sooner (seed: 32)
    scaling: str = "standard"     # "standard" (mean/std fit on the training part only), "log" (standard on
                                  # log values), "none" (seed), or "auto" (each series on its own: log if
                                  # positive, its seasonal indices removed where it shows its season, in
                                  # units of its mean absolute change)

    def validate(self) -> None:
        _choice("data.source", self.source, SOURCES)
        _choice("data.scaling", self.scaling, SCALINGS)
        _choice("data.fill", self.fill, FILLS)
        _choice("data.strategy", self.strategy, STRATEGIES)
        for name in ("num_samples", "batch_size", "horizon"):
            _at_least(f"data.{name}", getattr(self, name), 1)
        _at_least("data.seq_length", self.seq_length, 0)
        _at_least("data.season", self.season, 0)
        if self.source == "csv" and not self.target.strip():
            raise ConfigError("a CSV series needs its target column(s): --target COL[,COL]")
        if len(self.sep) != 1 and self.sep != "\\t":
            raise _invalid("data.sep", f"must be one character, got {self.sep!r}")
        if not 0 < self.train_ratio < 1:
            raise _invalid("data.train_ratio", f"must be between 0 and 1 (exclusive), got {self.train_ratio}")
        if not 0 <= self.val_ratio < 1:
            raise _invalid("data.val_ratio", f"must be in [0, 1), got {self.val_ratio}")
        try:
            parse_levels(self.levels)
        except ConfigError as e:
            raise _invalid("data.levels", f"must list percentages such as 80,95: {e}") from None


@dataclass
class ModelConfig:
    """The network: a recurrent encoder (+ linear head), or the seed's CustomRNN."""

    model: str = "recurrent"      # "recurrent" = rnnkit.RNN/LSTM/GRU encoder + linear head; "custom" = the seed's CustomRNN
    cell: str = "gru"             # encoder cell for model="recurrent": "rnn", "lstm" or "gru"
    hidden_size: int = 64         # seed: 32
    num_layers: int = 1           # stacked recurrent layers (recurrent only)
    dropout: float = 0.0          # between stacked layers, as torch.nn (recurrent only)
    residual: bool = True         # the head predicts the change from the last input value (recurrent only)
    relative: bool = False        # the encoder reads the targets relative to the window's last value, so
                                  # it sees shapes, not levels (recurrent only; the csv preset's default)
    members: int = 1              # an ensemble of this many networks (seeds seed, seed+1, ...) trained
                                  # together; it forecasts their median
    linear_skip: str = "auto"     # "yes": the head adds a linear autoregression over the window (ridge-fit
                                  # before training, or from zero with --relative yes); "auto": yes for
                                  # a table, no for the waves; "no" (recurrent only)

    def validate(self) -> None:
        _choice("model.model", self.model, MODELS)
        _choice("model.cell", self.cell, CELLS)
        _choice("model.linear_skip", self.linear_skip, ("auto", "yes", "no"))
        _at_least("model.hidden_size", self.hidden_size, 1)
        _at_least("model.num_layers", self.num_layers, 1)
        _at_least("model.members", self.members, 1)
        if not 0 <= self.dropout < 1:
            raise _invalid("model.dropout", f"must be in [0, 1), got {self.dropout}")
        if self.model == "custom" and (self.num_layers != 1 or self.dropout or self.relative or self.members > 1):
            raise ConfigError("model 'custom' (the seed's CustomRNN) is one network of one layer, without dropout "
                              "or relative inputs; drop --num-layers/--dropout/--relative/--members or use the "
                              "recurrent model")


@dataclass
class TrainConfig:
    """The optimisation: Adam, a learning-rate schedule, clipping, early stopping."""

    epochs: int = 40              # upper bound; early stopping may end sooner (seed: 100); 0 = auto: a
                                  # budget of steps for the number of windows (see rnnkit.train.auto_epochs)
    lr: float = 0.01              # Adam learning rate (seed: 0.01)
    weight_decay: float = 0.0     # Adam's L2 penalty
    schedule: str = "cosine"      # "cosine" anneals lr to ~0 over the epochs; "plateau" halves it when the
                                  # validation loss stalls; "none" keeps it constant (seed)
    clip_grad_norm: float = 1.0   # max global gradient norm; 0 turns clipping off (seed)
    patience: int = 10            # stop after this many epochs without a better validation loss; 0 = never
    loss: str = "mse"             # "mse" or "mae" (the median's loss: what MASE and sMAPE score)
    refit: str = "auto"           # "yes": after training (validation chose the epochs), train the model that
                                  # forecasts again on every point; "auto": yes for a table, no for the waves
    loss_steps: str = "auto"      # "all": every step predicts the next value; "last": only the window's
                                  # last step, the seed's target; "auto": "all" where the model can
                                  # (recurrent), else "last" (custom)
    seed: int = 0                 # seeds weights and shuffling, for reproducible runs
    log_every: int = 10           # print the seed's "Epoch e/E, Loss: ..., Time: ...s" line every N epochs
    checkpoint_every: int = 1     # training into a run directory: save a resumable checkpoint every N
                                  # epochs (and after the last one, and on Ctrl-C)

    def validate(self) -> None:
        _at_least("train.epochs", self.epochs, 0)
        _at_least("train.log_every", self.log_every, 1)
        _at_least("train.checkpoint_every", self.checkpoint_every, 1)
        _at_least("train.patience", self.patience, 0)
        if not self.lr > 0:
            raise _invalid("train.lr", f"must be positive, got {self.lr}")
        for name in ("weight_decay", "clip_grad_norm"):
            if getattr(self, name) < 0:
                raise _invalid(f"train.{name}", f"must be >= 0, got {getattr(self, name)}")
        _choice("train.schedule", self.schedule, SCHEDULES)
        _choice("train.loss_steps", self.loss_steps, LOSS_STEPS)
        _choice("train.loss", self.loss, LOSSES)
        _choice("train.refit", self.refit, ("auto", "yes", "no"))


@dataclass
class RunConfig:
    """Everything needed to rebuild a run's data, model and training."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "RunConfig":
        for section in SECTIONS:
            part = getattr(self, section)
            for f in fields(part):
                value = getattr(part, f.name)
                if isinstance(value, float) and not math.isfinite(value):
                    raise _invalid(f"{section}.{f.name}", f"must be a finite number, got {value}")
        self.data.validate()
        self.model.validate()
        self.train.validate()
        if self.model.model == "custom" and self.train.loss_steps == "all":
            raise ConfigError("model 'custom' (the seed's CustomRNN) only outputs the last step; "
                              "use --loss-steps last (as --preset seed does)")
        return self

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], base: "RunConfig | None" = None) -> "RunConfig":
        """A config from nested ``{"data": {...}, "model": {...}, "train": {...}}`` over ``base``
        (default: the dataclass defaults). Unknown sections or keys raise ConfigError."""
        cfg = dataclasses.replace(base) if base is not None else cls()
        if not isinstance(d, dict):
            raise ConfigError(f"a config must be a table of sections, got {type(d).__name__}")
        parts = {}
        for section in SECTIONS:
            current = getattr(cfg, section)
            values = d.get(section, {})
            if not isinstance(values, dict):
                raise ConfigError(f"config section [{section}] must be a table, got {values!r}")
            parts[section] = _override(current, values, section)
        unknown = sorted(set(d) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"unknown config section(s) {', '.join(unknown)} "
                              f"(use: {', '.join(SECTIONS)})")
        return cls(**parts)

    def override(self, **values: Any) -> "RunConfig":
        """A copy with flat overrides, e.g. ``override(cell="lstm", epochs=5)``; None values are
        skipped (flags not given). Every field name is unique across the three sections."""
        nested: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
        for key, value in values.items():
            if value is None:
                continue
            if key not in FIELD_SECTION:
                raise ConfigError(f"unknown setting {key!r} (known: {', '.join(sorted(FIELD_SECTION))})")
            nested[FIELD_SECTION[key]][key] = value
        return RunConfig.from_dict(nested, base=self)


SECTIONS = ("data", "model", "train")
_CLASSES = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
FIELD_SECTION = {f.name: s for s, c in _CLASSES.items() for f in fields(c)}
assert len(FIELD_SECTION) == sum(len(fields(c)) for c in _CLASSES.values()), "field names must be unique"

# Real series read from a CSV or a DataFrame (applied by `rnnkit train --data FILE.csv` and
# Forecaster.fit(table) unless a preset or config is given; flags and settings override it): each
# series log-scaled where positive and seasonally adjusted where seasonal, read relative to each
# window's level by an ensemble of small GRUs with a linear skip, trained on the median's loss (MAE)
# for a budget of steps, then refit on every point. Measured against statistical anchors on real
# series (benchmarks/forecast_anchors.py).
CSV_PRESET = "csv"

# The seed's exact setup: CustomRNN(1, 32, 1), Adam 0.01, 100 epochs, batch 32, no scaling, no
# validation, the last step's loss only, constant lr, no clipping, no early stopping.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "seed": {
        "data": {"source": "combined", "num_samples": 1000, "seq_length": 50, "train_ratio": 0.8,
                 "val_ratio": 0.0, "batch_size": 32, "scaling": "none"},
        "model": {"model": "custom", "hidden_size": 32, "num_layers": 1, "dropout": 0.0, "residual": False},
        "train": {"epochs": 100, "lr": 0.01, "weight_decay": 0.0, "schedule": "none",
                  "clip_grad_norm": 0.0, "patience": 0, "loss_steps": "last"},
    },
    CSV_PRESET: {
        "data": {"scaling": "auto", "batch_size": 64, "levels": "80,95"},
        "model": {"hidden_size": 32, "relative": True, "members": 5},
        "train": {"lr": 0.003, "loss": "mae", "loss_steps": "last", "epochs": 0, "patience": 0},
    },
}


def resolve(preset: str | None = None, toml_path: str | Path | None = None,
            **overrides: Any) -> RunConfig:
    """Defaults < preset < TOML file < overrides, validated."""
    cfg = RunConfig()
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r} (use one of: {', '.join(PRESETS)})")
        cfg = RunConfig.from_dict(PRESETS[preset], base=cfg)
    if toml_path is not None:
        cfg = RunConfig.from_dict(load_toml(toml_path), base=cfg)
    return cfg.override(**overrides).validate()


def load_toml(path: str | Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ConfigError("reading a TOML config needs Python >= 3.11 (or `pip install tomli`)") from None
    path = Path(path)
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not valid TOML: it is not UTF-8 text") from None


def _override(obj: Any, values: dict[str, Any], section: str) -> Any:
    known = {f.name: f for f in fields(obj)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown key(s) in [{section}]: {', '.join(unknown)} "
                          f"(known: {', '.join(known)})")
    typed = {k: _coerce(f"{section}.{k}", v, type(getattr(obj, k))) for k, v in values.items()}
    return dataclasses.replace(obj, **typed)


def _coerce(name: str, value: Any, kind: type) -> Any:
    """Check a value against its field's type; ints are accepted where a float is expected."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise _invalid(name, f"must be {kind.__name__}, got {value!r}")


def _choice(name: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise _invalid(name, f"must be one of {', '.join(options)}; got {value!r}")


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise _invalid(name, f"must be >= {low}, got {value}")


def _invalid(key: str, problem: str) -> ConfigError:
    """A bad value of config key ``key`` ("data.horizon"): the CLI names the key as a TOML file does
    (the value may come from a flag or a file), the Python API as Forecaster's setting ("horizon")."""
    return ConfigError(f"{key} {problem}", api=f"{key.split('.', 1)[1]} {problem}")
