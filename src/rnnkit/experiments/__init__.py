"""Experiments that show, with numbers, what the seed claims: a plain tanh RNN loses long-range
dependencies to vanishing gradients, and LSTM and GRU keep them.

    rnnkit experiment adding --cell lstm --T 100 --out runs/adding-lstm-100   # adding problem
    rnnkit experiment gradients --out runs/gradients                          # ||dL/dh_t|| against t
    rnnkit experiment compare                                                 # cells on the seed's wave

(``python -m rnnkit.experiments ...`` runs the same.) The CLI calls :func:`add_arguments` on the
``experiment`` parser and :func:`run` on its parsed arguments; the modules, and torch, are imported
only when an experiment runs.
"""

from __future__ import annotations

import argparse

CELL_NAMES = ("rnn", "lstm", "gru")

# Defaults measured on a 2-core CPU so that each adding run ends in under 10 minutes (README table).
ADDING = {"steps": 3000, "hidden_size": 128, "batch_size": 50, "lr": 1e-2, "clip_grad_norm": 1.0}
GRADIENTS = {"T": 100, "steps": 1500, "hidden_size": 128}


def _cells(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the training batches (default 0)")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="torch CPU threads (default 1: fastest for these small models)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``adding``, ``gradients`` and ``compare`` subcommands to ``parser``."""
    sub = parser.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)

    p = sub.add_parser("adding", help="the adding problem: can the cell carry two values across T steps?",
                       description="Train an RNN/LSTM/GRU (hidden H, Linear head on the last step) on the adding "
                                   "problem (Arjovsky, Shah & Bengio 2016): inputs ~U[0,1] and a marker channel with "
                                   "one 1 in each half of the sequence; target = the sum of the two marked values; "
                                   "MSE (always predicting 1 scores 1/6 = 0.167). Fresh batches every step, Adam, "
                                   "gradient-norm clipping; the test MSE on a fixed held-out set is measured along "
                                   "the way. Writes DIR/results.json (test_mse, settings, times, learning curve) "
                                   "and DIR/learning_curve.png.")
    p.add_argument("--cell", required=True, metavar="{rnn,lstm,gru}", help="recurrent cell")
    p.add_argument("--T", type=int, default=100, help="sequence length (default 100)")
    p.add_argument("--steps", type=int, default=ADDING["steps"], help="training steps (default %(default)s)")
    p.add_argument("--hidden-size", type=int, default=ADDING["hidden_size"], help="hidden units (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=ADDING["batch_size"],
                   help="sequences per step (default %(default)s)")
    p.add_argument("--lr", type=float, default=ADDING["lr"], help="Adam learning rate (default %(default)s)")
    p.add_argument("--clip-grad-norm", type=float, default=ADDING["clip_grad_norm"],
                   help="max global gradient norm, 0 = no clipping (default %(default)s)")
    p.add_argument("--test-size", type=int, default=1000, help="held-out sequences (default %(default)s)")
    p.add_argument("--evals", type=int, default=50, help="test-MSE measurements along training (default %(default)s)")
    p.add_argument("--out", required=True, metavar="DIR", help="where results.json and learning_curve.png go")
    _common(p)

    p = sub.add_parser("gradients", help="gradient flow: ||dL/dh_t|| against t, at init and after training",
                       description="For each cell, the norm of dL/dh_t for a loss at the last step of adding-problem "
                                   "sequences, against t, at initialization and after --steps adding-problem training "
                                   "steps. Writes DIR/results.json and DIR/gradient_flow.png.")
    p.add_argument("--cells", type=_cells, default=list(CELL_NAMES), metavar="CELLS",
                   help="comma-separated cells (default rnn,lstm,gru)")
    p.add_argument("--T", type=int, default=GRADIENTS["T"], help="sequence length (default %(default)s)")
    p.add_argument("--steps", type=int, default=GRADIENTS["steps"],
                   help="adding-problem training steps per cell (default %(default)s)")
    p.add_argument("--hidden-size", type=int, default=GRADIENTS["hidden_size"],
                   help="hidden units (default %(default)s)")
    p.add_argument("--out", required=True, metavar="DIR", help="where results.json and gradient_flow.png go")
    _common(p)

    p = sub.add_parser("compare", help="test MSE and training time of each cell on the seed's combined wave",
                       description="Train one forecaster per cell on the seed's combined wave with the defaults of "
                                   "`rnnkit train` (or the flags below) and print test MSE, MAE and training time.")
    p.add_argument("--cells", type=_cells, default=list(CELL_NAMES), metavar="CELLS",
                   help="comma-separated cells (default rnn,lstm,gru)")
    p.add_argument("--epochs", type=int, help="maximum epochs (default: rnnkit train's)")
    p.add_argument("--hidden-size", type=int, help="hidden units (default: rnnkit train's)")
    p.add_argument("--num-samples", type=int, help="points in the wave (default 1000)")
    p.add_argument("--out", metavar="DIR", help="also write DIR/compare.json")
    _common(p)


def run(args: argparse.Namespace) -> int:
    """Run the experiment that ``args`` (from a parser set up by :func:`add_arguments`) names."""
    import torch

    torch.set_num_threads(max(1, args.threads))
    progress = False if args.quiet else None
    log = None if args.quiet else print
    if args.experiment == "adding":
        from .adding import run_adding

        r = run_adding(args.cell, args.T, args.steps, args.hidden_size, args.batch_size, args.lr,
                       args.clip_grad_norm, args.seed, args.test_size, args.evals, args.out, progress)
        below = r["first_step_below_0.01"]
        print(f"adding problem, {args.cell.upper()} T={args.T}: test MSE {r['test_mse']:.5f} after {args.steps} "
              f"steps (predicting 1: {r['test_baseline_mse']:.4f}; below 0.01 "
              f"{f'from step {below}' if below is not None else 'never'}); {r['wall_time_s']:.0f}s; "
              f"wrote {args.out}")
    elif args.experiment == "gradients":
        from .gradients import run_gradients

        r = run_gradients(args.cells, args.T, args.steps, args.hidden_size, seed=args.seed, out=args.out,
                          progress=progress, log=log)
        print(f"{r['wall_time_s']:.0f}s; wrote {args.out}")
    else:
        from .compare import run_compare, table

        r = run_compare(args.cells, progress, args.out, epochs=args.epochs, hidden_size=args.hidden_size,
                        num_samples=args.num_samples, seed=args.seed)
        print(table(r))
        if args.out:
            print(f"wrote {args.out}")
    return 0
