"""The `rnnkit` command: train, test, backtest, predict, visualize (and bench), a thin layer over
:class:`rnnkit.Forecaster`.

Any :class:`~rnnkit.errors.RnnkitError` (a mistake the user can fix, said with these flags, which
:func:`as_arguments` turns into the Python API's words) and any argparse error becomes one line
``error: <message>`` on stderr and exit code 2; any other exception is a bug and keeps its traceback.
Ctrl-C exits 130 (during training, after saving the epoch it finishes). Under torchrun (``rnnkit
train --nproc N``) rank 0 says what one process would say; see :mod:`rnnkit.distributed`.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import re
import sys
import time
from pathlib import Path

from . import distributed
from .config import CSV_PRESET, CELLS, DEVICES, FILLS, LOSS_STEPS, LOSSES, MODELS, SCALINGS, SCHEDULES, STRATEGIES
from .errors import ConfigError, Interrupted, RnnkitError, on_the_command_line

DEFAULT_RUN = "runs/default"
# How long a rank other than 0 that meets a user error waits before it exits (torchrun then stops the
# rest), so that rank 0, which says the error, gets there first even on a loaded machine; rank 0's
# exit ends the wait.
USER_ERROR_WAIT_S = 15.0


class Parser(argparse.ArgumentParser):
    """argparse with rnnkit's error format: one line ``error: ...`` and exit 2, no usage block.
    Subparsers are made of the same class."""

    def error(self, message: str):
        line = f"error: {message} (see `{self.prog} --help`)"
        distributed.record(line)
        self.exit(2, f"{line}\n" if distributed.speaks() else None)  # under torchrun, rank 0 says it

def _yes_no(text: str) -> bool:
    if text.lower() in ("yes", "true", "1", "on"):
        return True
    if text.lower() in ("no", "false", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected yes or no, got {text!r}")


LEVELS_HELP = ("prediction intervals scored, in percent, e.g. 80,95: coverage, MSIS and pinball loss of the model's "
               "and the baselines' (default: the run's --levels; '' none)")

# (flag, config field, type, help) of the training overrides; a flag left out keeps the config's value.
TRAIN_FLAGS = [
    ("--data", "source", str, "series: combined (sin+cos+sign(sin), default), sine, or PATH.csv (a header row, "
                              "one row per time step, oldest first; needs --target)"),
    ("--target", "target", str, "CSV: target column(s), comma-separated; they are inputs too"),
    ("--features", "features", str, "CSV: extra input column(s), comma-separated (default: none)"),
    ("--time-col", "time_col", str, "CSV: time column, increasing: dates in any common form, quarters (1959Q1, "
                                    "1959-Q1), or numbers (years 1821, steps 0.5, 1.0, ...); sets --season "
                                    "and the times of `rnnkit predict`, written in the column's own form"),
    ("--date-format", "date_format", str, "CSV: the time column's strftime format where its dates are "
                                          "ambiguous, e.g. %%d/%%m/%%Y (day first); default: detected"),
    ("--id-col", "id_col", str, "CSV in the long format (id, time, values): the series id column; one model "
                                "is trained over every id's series, each scaled on its own"),
    ("--future-features", "future_features", str, "CSV: input column(s) whose future values are known (prices, "
                                                  "promotions, holidays), comma-separated: the model reads "
                                                  "them at the forecast steps too; `predict` takes them from "
                                                  "--future FILE"),
    ("--calendar", "calendar", _yes_no, "CSV with --time-col: yes adds the calendar (time of day, day of week, "
                                        "time of year, as sines and cosines) as inputs known ahead (default no)"),
    ("--sep", "sep", str, "CSV: the column separator (default ','; e.g. ';', or '\\t' for tabs)"),
    ("--fill", "fill", str, "CSV missing values and missing times of a regular grid: none (an error naming "
                            "them, default), interpolate (linear) or ffill (previous value)"),
    ("--num-samples", "num_samples", int, "points in the generated series (default 1000)"),
    ("--seq-length", "seq_length", int, "input steps per window; 0 or left out: auto, 50 for the waves "
                                        "(seed), for a CSV max(2*season, 2*horizon, 4) but at most 64 and "
                                        "half the (median) series, e.g. 24 for monthly data"),
    ("--horizon", "horizon", int, "steps to forecast (default 1)"),
    ("--levels", "levels", str, "prediction intervals, in percent: 80,95 (a CSV's default) writes "
                                "{target}_lo80, _hi80, _lo95, _hi95 beside each forecast, and `test` and "
                                "`backtest` score them; '' none"),
    ("--strategy", "strategy", str, "multi-step: direct (the head outputs all --horizon steps, default) or "
                                    "recursive (one step, fed back; every input must be a target)"),
    ("--season", "season", int, "seasonal period (seasonal naive, MASE, seasonal adjustment); default auto "
                                "from --time-col: yearly 1, quarterly 4, monthly 12, weekly 52, daily 7, "
                                "hourly 24, half-hourly 48; else 1"),
    ("--train-ratio", "train_ratio", float, "share of the windows before the test part (default 0.8: a table's "
                                            "last max(horizon, 20%%) points test)"),
    ("--val-ratio", "val_ratio", float, "share of the training windows, from their end, used to "
                                        "validate and stop early (default 0.1; seed 0)"),
    ("--scaling", "scaling", str, "standard (mean/std of the training part), log (standard on log values; "
                                  "positive series), none (seed), or auto (a CSV's default: each series log "
                                  "if positive, seasonally adjusted where seasonal, in units of its mean "
                                  "absolute change)"),
    ("--batch-size", "batch_size", int, "windows per batch; with --nproc N the global batch, split evenly "
                                       "over the processes (a multiple of N)"),
    ("--model", "model", str, "recurrent (encoder + linear head, default) or custom (the seed's CustomRNN)"),
    ("--cell", "cell", str, "encoder cell: rnn, lstm or gru"),
    ("--hidden-size", "hidden_size", int, "hidden units per layer"),
    ("--num-layers", "num_layers", int, "stacked recurrent layers"),
    ("--dropout", "dropout", float, "dropout between stacked layers"),
    ("--residual", "residual", _yes_no, "yes (default): the head predicts the change from the last value; "
                                        "no: the value itself"),
    ("--relative", "relative", _yes_no, "yes (a CSV's default): the network reads each window relative to its "
                                        "last value; no: as scaled"),
    ("--linear-skip", "linear_skip", str, "auto (yes for a CSV), yes or no: the head adds a linear "
                                          "autoregression over the window"),
    ("--members", "members", int, "an ensemble of this many networks trained together (seeds seed, seed+1, "
                                  "...); it forecasts their median (a CSV's default 5)"),
    ("--epochs", "epochs", int, "maximum epochs (early stopping may end sooner); 0: a budget of about 300 "
                                "steps for the number of windows (a CSV's default); with --resume DIR: the "
                                "epoch to train the run until"),
    ("--lr", "lr", float, "Adam learning rate"),
    ("--weight-decay", "weight_decay", float, "Adam's L2 penalty (default 0)"),
    ("--loss", "loss", str, "mse (default) or mae (a CSV's default: what MASE and sMAPE score)"),
    ("--refit", "refit", str, "auto (yes for a CSV), yes or no: after training, train the model that forecasts "
                              "again on every point, for the epochs validation chose"),
    ("--schedule", "schedule", str, "learning-rate schedule: cosine, plateau or none"),
    ("--clip-grad-norm", "clip_grad_norm", float, "max gradient norm, 0 = no clipping"),
    ("--patience", "patience", int, "epochs without a better validation loss before stopping, 0 = never"),
    ("--loss-steps", "loss_steps", str, "all (every step predicts its next value), last (the seed) or auto "
                                          "(default: all, but last for --model custom)"),
    ("--seed", "seed", int, "random seed for weights and shuffling"),
    ("--log-every", "log_every", int, "print the epoch line every N epochs"),
    ("--checkpoint-every", "checkpoint_every", int, "save a resumable checkpoint every N epochs (default 1; "
                                                    "also after the last epoch and on Ctrl-C)"),
]
CHOICES = {"fill": FILLS, "strategy": STRATEGIES, "scaling": SCALINGS, "model": MODELS, "cell": CELLS, "schedule": SCHEDULES,
           "loss_steps": LOSS_STEPS, "loss": LOSSES, "refit": ("auto", "yes", "no"),
           "linear_skip": ("auto", "yes", "no")}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="rnnkit",
        description="Train, test and plot recurrent forecasters of a time series (the seed's waves or a CSV).",
        epilog="Typical run: rnnkit train --out runs/a && rnnkit test --run runs/a && "
               "rnnkit visualize --run runs/a. A CSV: rnnkit train --data FILE.csv --target COL --horizon 12 "
               "--out runs/b && rnnkit test --run runs/b && rnnkit predict --run runs/b --data FILE.csv "
               "--out forecast.csv",
    )
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("train", help="train a model and write a run directory",
                       description="Train a forecaster and write DIR/model.safetensors, config.json and "
                                   "history.json. Settings: defaults < --preset < --config FILE.toml < flags. "
                                   "DIR/config.json is written before training and DIR/checkpoint.safetensors "
                                   "after every --checkpoint-every epochs; a killed or interrupted run "
                                   "continues with --resume DIR, bitwise as if it had never stopped. Ctrl-C "
                                   "finishes the current epoch, saves it and exits 130 (twice: at once). "
                                   "--nproc N trains on N processes with PyTorch's DistributedDataParallel, "
                                   "as `torchrun --standalone --nproc-per-node N -m rnnkit train ...` does.")
    p.add_argument("--preset", choices=["seed", CSV_PRESET], help="seed: the seed's exact setup (CustomRNN, "
                   "hidden 32, Adam 0.01, 100 epochs, batch 32, no scaling, last-step loss); csv (the default for "
                   "--data PATH.csv): --scaling auto (log for a positive series), --lr 0.001, --loss-steps last, "
                   "and the head's linear skip starts at the ridge fit of the training windows")
    p.add_argument("--config", metavar="FILE.toml", help="TOML file with [data], [model], [train] tables")
    for flag, dest, kind, text in TRAIN_FLAGS:
        p.add_argument(flag, dest=dest, type=kind, choices=CHOICES.get(dest),
                       metavar="{yes,no}" if kind is _yes_no else None if dest in CHOICES else dest.upper(), help=text)
    p.add_argument("--out", metavar="DIR", help=f"run directory (default {DEFAULT_RUN}); refused if it already "
                   f"holds a run, unless --force")
    p.add_argument("--force", action="store_true", help="replace the run already in --out (its weights, "
                   "checkpoint, history, metrics and plots)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint, with the "
                   "settings in DIR/config.json (no other settings flags); with --epochs N: train it until epoch "
                   "N, a finished run too (a table's model that forecasts is then refit; the run's old weights, "
                   "metrics and plots are removed)")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="torch CPU threads (default 1: fastest for these small models); per process with --nproc")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="auto (default: CUDA when torch sees a device, else the CPU), cpu or cuda; with --nproc, "
                        "rank r takes CUDA device r. The fused engine runs on the CPU; these small models often "
                        "train faster there")
    p.add_argument("--nproc", type=int, metavar="N",
                   help="train on N processes on this machine with DistributedDataParallel (gloo on the CPU, "
                        "nccl on CUDA): runs `torchrun --standalone --nproc-per-node N -m rnnkit train` with the "
                        "same arguments. Same data order and, without dropout, the same weights as one "
                        "process (float rounding aside); only rank 0 writes the run and prints; --resume works "
                        "(give --nproc again). Under torchrun, leave it out")
    p.add_argument("--quiet", action="store_true", help="no epoch lines")
    p.add_argument("--test", action="store_true", help="then `rnnkit test` the run, in the same process")
    p.add_argument("--visualize", action="store_true", help="then `rnnkit visualize` the run, in the same process")
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("import-seed", help="make a run directory from the seed's rnn_custom_model.pth",
                       description="Load FILE.pth, a CustomRNN state_dict saved by the seed's train.py, with "
                                   "torch.load(weights_only=True): tensors only, a file holding any other "
                                   "object is refused, nothing is executed. Write it as a run directory "
                                   "with the seed's settings (--preset seed, the file's hidden size), for "
                                   "`rnnkit test` and `rnnkit visualize`.")
    p.add_argument("pth", metavar="FILE.pth", help="the seed's saved model")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory to write")
    p.add_argument("--force", action="store_true", help="replace the run already in --out")
    p.set_defaults(handler=cmd_import_seed)

    p = sub.add_parser("test", help="evaluate a run and the baselines on its test split",
                       description="Print the test MSE (as the seed does), MAE and RMSE in the data's "
                                   "original units, then MSE, RMSE, MAE, sMAPE and MASE of the model and, on the "
                                   "same test windows, of naive, seasonal naive and linear AR baselines; write "
                                   "DIR/metrics.json (the model's metrics at the top level, the baselines under "
                                   "'baselines').")
    p.add_argument("--run", default=DEFAULT_RUN, metavar="DIR", help=f"run directory (default {DEFAULT_RUN})")
    p.add_argument("--levels", metavar="L,L", help=LEVELS_HELP)
    p.add_argument("--season", type=int, metavar="M", help="seasonal period for seasonal naive and MASE "
                   "(default: the run's, see `rnnkit train --help`)")
    p.set_defaults(handler=cmd_test)

    p = sub.add_parser("backtest", help="rolling-origin evaluation of a run, one row per fold",
                       description="Cut the last FOLDS * P points into FOLDS blocks; fold k forecasts the "
                                   "windows whose targets lie in block k from the points before it, and is "
                                   "scored with the model's and the baselines' metrics. Without --refit the "
                                   "run's model is used and the blocks must lie in its test part (P default: "
                                   "test part / FOLDS); with --refit a fresh model with the run's settings is "
                                   "trained on the points before each block (P default: the test part). "
                                   "Writes DIR/backtest.json.")
    p.add_argument("--run", default=DEFAULT_RUN, metavar="DIR", help=f"run directory (default {DEFAULT_RUN})")
    p.add_argument("--folds", type=int, default=3, metavar="K", help="number of folds (default 3)")
    p.add_argument("--refit", action="store_true", help="retrain on the points before each fold")
    p.add_argument("--fold-size", type=int, metavar="P", help="points per fold")
    p.add_argument("--season", type=int, metavar="M", help="seasonal period (default: the run's)")
    p.add_argument("--levels", metavar="L,L", help=LEVELS_HELP)
    p.add_argument("--threads", type=int, default=1, metavar="N", help="torch CPU threads (default 1)")
    p.set_defaults(handler=cmd_backtest)

    p = sub.add_parser("predict", help="forecast the steps after the end of a CSV",
                       description="Forecast the H steps after the last row of each series of --data (read "
                                   "with the run's columns; it may be longer than the training series) and "
                                   "write FILE.csv: the id column of a panel, the time column continued in its "
                                   "own form, a column step (1..H), and one column per target, named as the "
                                   "target, with its prediction intervals beside it ({target}_lo80, _hi80, ... "
                                   "for the run's --levels).")
    p.add_argument("--run", default=DEFAULT_RUN, metavar="DIR", help=f"run directory (default {DEFAULT_RUN})")
    p.add_argument("--data", metavar="PATH.csv", help="history to forecast from (default: the run's own series)")
    p.add_argument("--horizon", type=int, metavar="H", help="steps (default: the run's --horizon; more only "
                   "with --strategy recursive)")
    p.add_argument("--out", required=True, metavar="FILE.csv", help="where to write the forecast")
    p.add_argument("--plot", metavar="FILE.png", help="also draw the history and the forecast")
    p.add_argument("--future", metavar="FILE.csv", help="a run with --future-features: their values at the "
                   "forecast steps, a CSV with those columns (and the time and id columns; rows found by time)")
    p.add_argument("--levels", metavar="L,L", help="prediction intervals in percent, e.g. 80,95: columns "
                   "{target}_lo80, _hi80, ... (default: the run's --levels; '' none)")
    p.set_defaults(handler=cmd_predict)

    p = sub.add_parser("export", help="write a run's forecasting model as ONNX",
                       description="Write the run's model that forecasts as an ONNX file, with ONNX's own "
                                   "GRU/LSTM/RNN operators and any batch size and window length, checked with "
                                   "onnxruntime. Input x (batch, length, features): windows scaled as the run "
                                   "scales them; output y (batch, horizon * targets): the forecasts in the same "
                                   "units. The scalers are in the model's metadata (rnnkit.scalers).")
    p.add_argument("--run", default=DEFAULT_RUN, metavar="DIR", help=f"run directory (default {DEFAULT_RUN})")
    p.add_argument("--out", required=True, metavar="FILE.onnx", help="where to write the model")
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("visualize", help="plot a run's test predictions and loss curve",
                       description="Write DIR/predictions_vs_true.png (the whole test split) and "
                                   "DIR/loss_curve.png.")
    p.add_argument("--run", default=DEFAULT_RUN, metavar="DIR", help=f"run directory (default {DEFAULT_RUN})")
    p.set_defaults(handler=cmd_visualize)

    # bench lives in rnnkit.bench, imported only when run, so a missing or broken bench module never
    # breaks the other commands; its own parser parses the rest of the line.
    p = sub.add_parser("bench", help="speed benchmarks (see `rnnkit bench --help`)", add_help=False)
    p.set_defaults(handler=cmd_bench)

    from . import experiments  # argparse only; torch is imported when an experiment runs
    p = sub.add_parser("experiment", help="adding problem, gradient flow, cell comparison",
                       description="Experiments that show vanishing gradients and long-range memory.")
    experiments.add_arguments(p)
    p.set_defaults(handler=experiments.run)
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from .config import SOURCES, resolve
    from .runs import HISTORY, WEIGHTS, check_new_run_dir, load_run, read_config, remove_stale_temp_files

    # Everything is checked before torch is imported and before anything is written. Under torchrun
    # every rank checks the settings; rank 0 alone looks at and writes the run directory.
    log = None if args.quiet else print
    overrides = {dest: getattr(args, dest) for _, dest, _, _ in TRAIN_FLAGS}
    if args.resume is not None:
        out = Path(args.resume)
        given = [flag for flag, dest, _, _ in TRAIN_FLAGS if overrides[dest] is not None and dest != "epochs"]
        given += [f"--{k}" for k in ("preset", "config", "out", "force") if getattr(args, k)]
        if given:
            raise ConfigError(f"--resume continues a run with the settings in its config.json (--epochs N may "
                              f"train it further); drop {', '.join(given)} (or start a new run with --out)")
        if args.epochs is not None:
            _extend(out, args.epochs)
        cfg = read_config(out)
    else:
        preset = args.preset
        if overrides["source"] is not None and overrides["source"] not in SOURCES:  # --data PATH.csv
            overrides["csv"], overrides["source"] = overrides["source"], "csv"
            preset = preset or CSV_PRESET
        cfg = resolve(preset, args.config, **overrides)
        out = Path(args.out or DEFAULT_RUN)
        if distributed.speaks():
            check_new_run_dir(out, args.force)
    nproc = distributed.check_world(args.nproc, cfg.data.batch_size)
    finished = args.resume is not None and (out / WEIGHTS).exists() and (out / HISTORY).exists()
    if nproc > 1 and not distributed.in_worker() and not finished:
        distributed.resolve_device(args.device, nproc)  # devices this machine lacks: an error before torchrun
        return distributed.launch(nproc, _without_nproc(args.argv), out, args.threads)

    import torch

    from .forecaster import Forecaster

    torch.set_num_threads(args.threads)
    with distributed.process_group(args.device) as device:
        try:
            if args.resume is None:
                f = Forecaster(cfg).fit(log=log, run_dir=out, force=args.force, device=device)
            elif finished:
                load_run(out)  # checks it
                if distributed.speaks():
                    print(f"{out} has finished training; nothing to resume")
                return 0
            else:
                if distributed.speaks():
                    remove_stale_temp_files(out)
                f = Forecaster.resume(out, log=log, device=device)
        except Interrupted as e:
            print(f"interrupted after epoch {e.epoch}; its checkpoint is saved in {out} "
                  f"(continue with `rnnkit train --resume {out}`)", file=sys.stderr)
            return 130
    if not distributed.speaks():
        return 0
    h = f.history
    refit = h.get("refit")
    again = (f", then {len(refit['epoch'])} on every point in {sum(refit['time']):.1f}s" if refit else "")
    print(f"Trained {len(h['epoch'])} epochs in {sum(h['time']):.1f}s (kept epoch {h['best_epoch']}){again}; "
          f"run saved to {out}")
    # One process for the whole job saves a torch import and a numba cache load per step (~2 s each).
    after = argparse.Namespace(run=str(out), season=None, levels=None)  # the run's own
    if args.test:
        cmd_test(after)
    if args.visualize:
        cmd_visualize(after)
    return 0


def _extend(out: Path, epochs: int) -> None:
    """`train --resume DIR --epochs N`: make the run train until epoch N (see rnnkit.forecaster.extend),
    before --nproc starts torchrun, whose workers then resume it as it is."""
    from .forecaster import extend
    from .runs import read_config

    if distributed.in_worker():
        if read_config(out).train.epochs != epochs:
            raise ConfigError(f"under torchrun, --resume {out} trains until its config's epochs; extend it with "
                              f"`rnnkit train --resume {out} --epochs {epochs} --nproc N`")
        return
    done = extend(out, epochs)
    if done is not None:
        print(f"{out}: training on from epoch {done} until epoch {epochs}")


class _Version(argparse.Action):
    """`rnnkit --version`: rnnkit's version, and the torch and Python it runs on (torch's found without
    importing it, and only when asked)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the versions of rnnkit, torch and Python")

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from importlib.metadata import PackageNotFoundError, version

        from . import __version__

        try:
            torch = version("torch")
        except PackageNotFoundError:
            torch = "not installed"
        print(f"rnnkit {__version__} (torch {torch}, Python {sys.version.split()[0]})")
        parser.exit()


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line minus --nproc N (or an abbreviation argparse took for it, --np.. ; or --nproc=N):
    torchrun's own parser would read it as its --nproc-per-node."""
    kept, skip = [], False
    for token in argv:
        name = token.split("=", 1)[0]
        if skip or (name.startswith("--np") and "--nproc".startswith(name)):
            skip = not skip and "=" not in token
            continue
        kept.append(token)
    return kept


def cmd_import_seed(args: argparse.Namespace) -> int:
    from .forecaster import Forecaster
    from .runs import begin_run, check_new_run_dir

    check_new_run_dir(args.out, args.force)
    f = Forecaster.from_seed(args.pth)
    begin_run(args.out, f._meta(), args.force)
    f.save(args.out)
    print(f"imported {args.pth} (CustomRNN, hidden size {f.config.model.hidden_size}) into {args.out}")
    return 0


def _weights_note(run: str) -> None:
    from .runs import weights_source

    note = weights_source(run)
    if note:
        print(note, file=sys.stderr)


def number(v: float) -> str:
    """One format for every number the tables print, whatever its magnitude: 4 significant digits in
    fixed point (0.001013, 0.2020, 17.77, 503.4), whole numbers from 1000 on (10471, 2312000), and a
    power of ten below 0.0001 only (1.040e-07), where fixed point would be a row of zeros."""
    if not math.isfinite(v):
        return str(v)
    if v == 0:
        return "0"
    r = float(f"{v:.4g}")  # rounded first: 999.96 is 1000
    if abs(r) >= 1000:
        return f"{v:.0f}"
    if abs(r) < 1e-4:
        return f"{v:.3e}"
    return f"{r:.{3 - math.floor(math.log10(abs(r)))}f}"


def table(header: list[str], rows: list[list]) -> str:
    """Rows under a header, aligned: the first column to the left, the others to the right, floats in
    :func:`number`'s format."""
    cells = [header] + [[str(r[0])] + [number(v) if isinstance(v, float) else str(v) for v in r[1:]] for r in rows]
    widths = [max(len(row[k]) for row in cells) for k in range(len(header))]
    return "\n".join((row[0].ljust(widths[0]) + "".join(f"  {c:>{w}}" for c, w in zip(row[1:], widths[1:]))).rstrip()
                     for row in cells)


METRIC_COLUMNS = [("mse", "MSE"), ("rmse", "RMSE"), ("mae", "MAE"), ("smape", "sMAPE %"), ("mase", "MASE")]


def metrics_table(rows: dict[str, dict]) -> str:
    """Rows of metrics (name -> metrics) as an aligned text table: name, MSE, RMSE, MAE, sMAPE %, MASE."""
    return table([""] + [title for _, title in METRIC_COLUMNS],
                 [[name] + [float(m[key]) for key, _ in METRIC_COLUMNS] for name, m in rows.items()])


def cmd_test(args: argparse.Namespace) -> int:
    from .forecaster import Forecaster
    from .runs import METRICS, write_json

    f = Forecaster.load(args.run)
    _weights_note(args.run)
    m = f.evaluate("test", season=args.season, baselines=True, levels=args.levels)
    print(f"Test MSE Loss: {m['mse']:.6f}")  # the seed's line, as it prints it
    print(f"Test MAE: {number(m['mae'])}")
    print(f"Test RMSE: {number(m['rmse'])}")
    print(f"\n{m['windows']} test windows, horizon {m['horizon']}, season {m['season']} (MASE < 1: better than "
          f"the training part's seasonal naive error); original units:")
    models = {"model": m, **{BASELINE_NAMES[k]: v for k, v in m["baselines"].items()}}
    targets = list(m["targets"]) if len(m["targets"]) > 1 else []
    if targets:
        print(f"all {len(targets)} targets:")
    print(metrics_table(models))
    for name in targets:
        print(f"{name}:")
        print(metrics_table({row: v["targets"][name] for row, v in models.items()}))
    if "intervals" in m:
        print(f"prediction intervals (calibrated on the {m['calibrated_on']}; MSIS and pinball scaled as MASE):")
        print(intervals_table(models))
    if "series" in m:
        print(f"(over {len(m['series'])} series: MASE is their mean; each series' metrics are in "
              f"{Path(args.run) / METRICS})")
    write_json(Path(args.run) / METRICS, m)
    return 0


BASELINE_NAMES = {"naive": "naive", "seasonal_naive": "seasonal naive", "linear_ar": "linear AR"}


def intervals_table(rows: dict[str, dict]) -> str:
    """The interval scores of rows (name -> metrics with "intervals"): per level the coverage (%), MSIS
    and pinball loss."""
    levels = list(next(iter(rows.values()))["intervals"])
    header = [""] + [f"{title} {lv}" for lv in levels for title in ("cover %", "MSIS", "pinball")]
    return table(header, [[name] + [float(m["intervals"][lv][k]) for lv in levels
                                    for k in ("coverage", "msis", "pinball")]
                          for name, m in rows.items() if "intervals" in m])


def cmd_backtest(args: argparse.Namespace) -> int:
    import torch

    from .forecaster import Forecaster
    from .runs import write_json

    torch.set_num_threads(max(1, args.threads))
    f = Forecaster.load(args.run)
    bt = f.backtest(args.folds, args.refit, args.fold_size, args.season, levels=args.levels)
    print(f"Backtest of {args.run}: {args.folds} folds of {bt['fold_size']} points, "
          f"{'refit on the points before each fold' if args.refit else 'the run model, no refit'}, "
          f"season {bt['season']}")
    rows = [[r["fold"], r["origin"], r["train_points"], r["windows"], r["rmse"], r["smape"], r["mase"],
             *(r["baselines"][b]["mase"] for b in BASELINE_NAMES)]
            for r in bt["folds"] + [dict(bt["mean"], fold="mean", origin="", train_points="", windows="")]]
    print(table(["fold", "origin", "train pts", "windows", "RMSE", "sMAPE %", "MASE", "naive", "s.naive", "lin.AR"],
                rows))
    print("(naive, s.naive, lin.AR: the baselines' MASE)")
    if "intervals" in bt["mean"]:
        print("prediction intervals, mean over the folds (MSIS and pinball scaled as MASE):")
        print(intervals_table({"model": bt["mean"], **{BASELINE_NAMES[k]: v for k, v in bt["mean"]["baselines"].items()}}))
    write_json(Path(args.run) / "backtest.json", bt)
    print(f"wrote {Path(args.run) / 'backtest.json'}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .forecaster import Forecaster
    from .runs import write_bytes

    f = Forecaster.load(args.run)
    history = f.history_series(args.data)
    note = lambda text: print(text, file=sys.stderr)  # noqa: E731
    fc = f.forecast(history, args.horizon, log=note, levels=args.levels, future=args.future)
    write_bytes(args.out, forecast_csv(fc, f.config.data.id_col).encode())
    steps = int(fc["step"].max())
    source = args.data or "the run's series"
    if history.ids is None:
        print(f"wrote {args.out} ({steps} steps after row {len(history.series[0].values)} of {source})")
    else:
        print(f"wrote {args.out} ({steps} steps after the end of each of the {len(history)} series of {source})")
    if args.plot:
        from .visualize import plot_forecast

        print(f"wrote {plot_forecast(history, fc, args.plot, f.config.data)}")
    return 0


def forecast_csv(forecast, id_col: str = "") -> str:
    """A forecast table (Forecaster.forecast's DataFrame) as CSV text, each float column written in
    fixed point to 6 significant digits of its largest value in each series (``id_col``'s groups):
    445.677 in a series that reaches 622, 0.0123457 in one that reaches 0.05, 1234568 in one of
    millions; not the 17 digits of a float64, and no powers of ten."""
    import numpy as np

    out = forecast.copy()
    groups = out[id_col] if id_col and id_col in out else np.zeros(len(out))
    for name in out.columns:
        values = out[name]
        if values.dtype.kind != "f":
            continue
        scale = values.abs().groupby(groups).transform("max").to_numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            decimals = np.where(scale > 0, 5 - np.floor(np.log10(scale)), 0).clip(0, 15).astype(int)
        # + 0.0: a value that rounds to zero is written 0.00, not -0.00
        out[name] = ["" if v != v else f"{round(v, d) + 0.0:.{d}f}" for v, d in zip(values.to_numpy(), decimals)]
    return out.to_csv(index=False)


def cmd_export(args: argparse.Namespace) -> int:
    import logging

    from .forecaster import Forecaster

    for name in ("onnxscript", "torch.onnx"):  # the exporters' notes (optional packages, folding) are not the user's
        logging.getLogger(name).setLevel(logging.ERROR)
    f = Forecaster.load(args.run)
    d = f.config.data
    rows = (f"at least {d.seq_length} past rows, then the {d.horizon} forecast steps' rows (their features known "
            f"ahead)" if f._io.get("n_future") else f"at least {d.seq_length}")
    print(f"wrote {f.export(args.out)} (input x: (batch, length, {f._io['input_size']}) scaled windows, length "
          f"{rows}; output y: (batch, {f._io['output_size']}); checked with onnxruntime)")
    return 0


def cmd_visualize(args: argparse.Namespace) -> int:
    from .data import window_places
    from .forecaster import Forecaster
    from .visualize import plot_loss_curve, plot_predictions

    f = Forecaster.load(args.run)
    _weights_note(args.run)
    windows = f.windows()
    _, pred = f.window_predictions(windows)
    written = []
    if len(pred):
        written.append(plot_predictions(pred, window_places(windows.splits, "test"), f.panel,
                                        Path(args.run) / "predictions_vs_true.png", f.config.data))
    else:
        print("the series are too short for a test part; skipped predictions_vs_true.png", file=sys.stderr)
    if f.history:
        written.append(plot_loss_curve(f.history, Path(args.run) / "loss_curve.png"))
    else:
        print("no history.json in the run; skipped loss_curve.png", file=sys.stderr)
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_bench(args: argparse.Namespace, rest: list[str]) -> int:
    try:
        from . import bench
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}.bench":
            raise
        raise RnnkitError("`rnnkit bench` is not available in this version of rnnkit") from None
    parser = Parser(prog="rnnkit bench", description="Speed benchmarks.")
    bench.add_arguments(parser)
    return bench.run(parser.parse_args(rest))


# How the Python API names what a flag sets, where that is not the flag's dest: `rnnkit train --data`
# is Forecaster.fit(data), its --out is fit(run_dir).
API_NAMES = {"source": "data", "out": "run_dir"}
_FLAG = re.compile(r"(?<![\w-])--([A-Za-z][A-Za-z0-9-]*)(?: ('[^']*'|[A-Z][A-Z_]*(?:\[,[A-Z_]+\]|\.[a-z]+)?|"
                   r"-?\d+(?:\.\d+)?(?:e-?\d+)?|[a-z][a-z0-9_]*))?")


def as_arguments(text: str) -> str:
    """A message written with this CLI's flags, in the words of the Python API (see
    :mod:`rnnkit.errors`): ``--fill interpolate`` -> ``fill='interpolate'``, ``--horizon 12`` ->
    ``horizon=12``, ``--relative yes`` -> ``relative=True``, ``--force`` -> ``force=True``, a flag
    without its value -> its argument's name (``a shorter --seq-length`` -> ``a shorter seq_length``).
    A word after a flag is its value only where the flag takes it (a number of a numeric flag, one of
    its choices, a quoted string or a PLACEHOLDER); flags this CLI does not have and commands in
    backticks are left as they are."""
    parts = text.split("`")
    parts[::2] = [_FLAG.sub(_as_argument, part) for part in parts[::2]]
    return "`".join(parts)


def _as_argument(match: re.Match) -> str:
    flag, token = match.group(1), match.group(2)
    actions = _flags().get(flag)
    if actions is None:
        return match.group(0)
    name = API_NAMES.get(actions[0].dest, actions[0].dest)
    value = next((v for v in (_value(a, token) for a in actions if token is not None) if v is not None), None)
    if value is not None:
        return f"{name}={value}"
    rest = "" if token is None else f" {token}"
    switch = any(a.nargs == 0 and a.const is True for a in actions)
    return f"{name}=True{rest}" if switch else f"{name}{rest}"


def _value(action: argparse.Action, token: str) -> str | None:
    """``token`` as a Python literal of ``action``'s value, or None if it is not one of its values."""
    if action.nargs == 0:
        return None
    if action.type is _yes_no:
        return {"yes": "True", "no": "False"}.get(token)
    if action.choices is not None:
        return repr(token) if token in action.choices else None
    if action.type in (int, float):
        try:
            action.type(token)
        except ValueError:
            return None
        return token
    return token if token[0] == "'" or token[0].isupper() else None


@functools.lru_cache(maxsize=1)
def _flags() -> dict[str, list[argparse.Action]]:
    """Every flag of every subcommand (without its dashes) -> its actions, in the order found."""
    found: dict[str, list[argparse.Action]] = {}
    parsers = [build_parser()]
    while parsers:
        for action in parsers.pop()._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            for option in action.option_strings:
                if option.startswith("--") and action.dest != "help":
                    found.setdefault(option[2:], []).append(action)
    return found


def main(argv: list[str] | None = None) -> int:
    with on_the_command_line():  # errors say the flags
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)  # the rest of the line is bench's to parse
    if rest and args.handler is not cmd_bench:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if getattr(args, "threads", 1) < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what `train --nproc` hands to torchrun
    try:
        if getattr(args, "run", None) is not None:  # a missing or broken run answers before torch loads
            from .runs import read_meta

            read_meta(args.run)
        return int((args.handler(args, rest) if args.handler is cmd_bench else args.handler(args)) or 0)
    except RnnkitError as e:
        # Under torchrun every rank meets the same user error: rank 0 says it, each rank records it.
        line = f"error: {e}"
        if distributed.speaks():
            print(line, file=sys.stderr)
        distributed.record(line)
        if not distributed.speaks():  # torchrun stops the others when the first rank exits: let rank 0
            time.sleep(USER_ERROR_WAIT_S)  # say it first (it stops this one then), however late it got there
        return 2
    except KeyboardInterrupt:
        if distributed.speaks():
            print("interrupted", file=sys.stderr)
        distributed.record("interrupted")
        return 130
    except BrokenPipeError:  # `rnnkit test | head`: the reader left; not an error of ours
        sys.stdout = open(os.devnull, "w")
        return 0
    except Exception as e:
        if not distributed.in_worker():
            raise
        return distributed.crashed(e)  # its traceback, and its rank in torchrun's error file


if __name__ == "__main__":
    sys.exit(main())
