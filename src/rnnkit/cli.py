"""The `rnnkit` command: train, test, visualize (and bench), a thin layer over :class:`rnnkit.Forecaster`.

Any :class:`~rnnkit.errors.RnnkitError` (a mistake the user can fix) becomes one line
``error: <message>`` on stderr and exit code 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import CELLS, LOSS_STEPS, MODELS, SCALINGS, SCHEDULES, SOURCES
from .errors import RnnkitError

DEFAULT_RUN = "runs/default"

def _yes_no(text: str) -> bool:
    if text.lower() in ("yes", "true", "1", "on"):
        return True
    if text.lower() in ("no", "false", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected yes or no, got {text!r}")


# (flag, config field, type, help) of the training overrides; a flag left out keeps the config's value.
TRAIN_FLAGS = [
    ("--data", "source", str, "series: combined (sin+cos+sign(sin), default) or sine"),
    ("--num-samples", "num_samples", int, "points in the generated series (default 1000)"),
    ("--seq-length", "seq_length", int, "input steps per window (default 50)"),
    ("--val-ratio", "val_ratio", float, "share of the training windows, from their end, used to "
                                        "validate and stop early (default 0.1; seed 0)"),
    ("--scaling", "scaling", str, "standard (fit on the training part) or none (seed)"),
    ("--batch-size", "batch_size", int, "windows per batch"),
    ("--model", "model", str, "recurrent (encoder + linear head, default) or custom (the seed's CustomRNN)"),
    ("--cell", "cell", str, "encoder cell: rnn, lstm or gru"),
    ("--hidden-size", "hidden_size", int, "hidden units per layer"),
    ("--num-layers", "num_layers", int, "stacked recurrent layers"),
    ("--dropout", "dropout", float, "dropout between stacked layers"),
    ("--residual", "residual", _yes_no, "yes (default): the head predicts the change from the last value; "
                                        "no: the value itself"),
    ("--epochs", "epochs", int, "maximum epochs (early stopping may end sooner)"),
    ("--lr", "lr", float, "Adam learning rate"),
    ("--schedule", "schedule", str, "learning-rate schedule: cosine, plateau or none"),
    ("--clip-grad-norm", "clip_grad_norm", float, "max gradient norm, 0 = no clipping"),
    ("--patience", "patience", int, "epochs without a better validation loss before stopping, 0 = never"),
    ("--loss-steps", "loss_steps", str, "all (every step predicts its next value), last (the seed) or auto "
                                          "(default: all, but last for --model custom)"),
    ("--seed", "seed", int, "random seed for weights and shuffling"),
    ("--log-every", "log_every", int, "print the epoch line every N epochs"),
]
CHOICES = {"source": SOURCES, "scaling": SCALINGS, "model": MODELS, "cell": CELLS, "schedule": SCHEDULES,
           "loss_steps": LOSS_STEPS}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnnkit",
        description="Train, test and plot recurrent forecasters of a time series (the seed's waves).",
        epilog="Typical run: rnnkit train --out runs/a && rnnkit test --run runs/a && "
               "rnnkit visualize --run runs/a",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("train", help="train a model and write a run directory",
                       description="Train a forecaster and write DIR/model.safetensors, config.json and "
                                   "history.json. Settings: defaults < --preset < --config FILE.toml < flags.")
    p.add_argument("--preset", choices=["seed"], help="seed: the seed's exact setup (CustomRNN, hidden 32, "
                   "Adam 0.01, 100 epochs, batch 32, no scaling, last-step loss)")
    p.add_argument("--config", metavar="FILE.toml", help="TOML file with [data], [model], [train] tables")
    for flag, dest, kind, text in TRAIN_FLAGS:
        p.add_argument(flag, dest=dest, type=kind, choices=CHOICES.get(dest),
                       metavar="{yes,no}" if kind is _yes_no else None if dest in CHOICES else dest.upper(), help=text)
    p.add_argument("--out", default=DEFAULT_RUN, metavar="DIR", help=f"run directory (default {DEFAULT_RUN})")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="torch CPU threads (default 1: fastest for these small models)")
    p.add_argument("--quiet", action="store_true", help="no epoch lines")
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("test", help="evaluate a run on its test split",
                       description="Print the test MSE (as the seed does), MAE and RMSE in the data's "
                                   "original units and write DIR/metrics.json.")
    p.add_argument("--run", default=DEFAULT_RUN, metavar="DIR", help=f"run directory (default {DEFAULT_RUN})")
    p.set_defaults(handler=cmd_test)

    p = sub.add_parser("visualize", help="plot a run's test predictions and loss curve",
                       description="Write DIR/predictions_vs_true.png (the whole test split) and "
                                   "DIR/loss_curve.png.")
    p.add_argument("--run", default=DEFAULT_RUN, metavar="DIR", help=f"run directory (default {DEFAULT_RUN})")
    p.set_defaults(handler=cmd_visualize)

    # bench lives in rnnkit.bench, imported only when run, so a missing or broken bench module never
    # breaks the other commands; its own parser parses the rest of the line.
    p = sub.add_parser("bench", help="speed benchmarks (see `rnnkit bench --help`)", add_help=False)
    p.set_defaults(handler=cmd_bench)
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from .config import resolve
    from .forecaster import Forecaster

    torch.set_num_threads(max(1, args.threads))
    overrides = {dest: getattr(args, dest) for _, dest, _, _ in TRAIN_FLAGS}
    cfg = resolve(args.preset, args.config, **overrides)
    f = Forecaster(cfg).fit(log=None if args.quiet else print)
    out = f.save(args.out)
    h = f.history
    print(f"Trained {len(h['epoch'])} epochs in {sum(h['time']):.1f}s (kept epoch {h['best_epoch']}); "
          f"run saved to {out}")
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    from .forecaster import Forecaster
    from .runs import METRICS, write_json

    m = Forecaster.load(args.run).evaluate("test")
    print(f"Test MSE Loss: {m['mse']:.6f}")
    print(f"Test MAE: {m['mae']:.6f}")
    print(f"Test RMSE: {m['rmse']:.6f}")
    write_json(Path(args.run) / METRICS, m)
    return 0


def cmd_visualize(args: argparse.Namespace) -> int:
    from .forecaster import Forecaster
    from .visualize import plot_loss_curve, plot_predictions

    f = Forecaster.load(args.run)
    true, pred = f.predictions("test")
    written = [plot_predictions(true, pred, Path(args.run) / "predictions_vs_true.png")]
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
    parser = argparse.ArgumentParser(prog="rnnkit bench", description="Speed benchmarks.")
    bench.add_arguments(parser)
    return bench.run(parser.parse_args(rest))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)  # the rest of the line is bench's to parse
    if rest and args.handler is not cmd_bench:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return int((args.handler(args, rest) if args.handler is cmd_bench else args.handler(args)) or 0)
    except RnnkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
