"""A change's effect on the fused engine's train step (or, with --infer, inference), both versions
in one process: a git revision's rnnkit (imported as the package ``rnnkit_ab``) against this tree's,
with torch.nn, timed in interleaved rounds as `rnnkit bench` times its rows, every other round in
reverse order: with a fixed order the second of two identical versions measured 1.0-3.0% faster
than the first (9 of 9 rows, HEAD against itself), and alternating, -2 to +2%.

On the shared 2-core dev machine timings drift by 15-40% between processes and from minute to minute,
so two versions run in alternating processes needed many pairs to tell a 5% change from the drift;
in one process every round sees both versions in the same moment (benchmarks/README.md, eighth pass).
The revision's source is exported once to ``$TMPDIR/rnnkit-ab/<commit>`` and its loops compiled there
on first use (~45 s); later runs load them.

    .venv/bin/python benchmarks/ab.py HEAD~1                          # B32 T50 H32, every cell
    .venv/bin/python benchmarks/ab.py 0a42bb2 --sizes 32x50x256 --cells lstm --rounds 5
    .venv/bin/python benchmarks/ab.py HEAD~1 --infer --sizes 64x200x128   # a forward under no_grad
    .venv/bin/python benchmarks/ab.py HEAD~1 --clock cpu    # CPU time on one thread: a busy machine moves it less
"""

from __future__ import annotations

import argparse
import importlib
import os
import pathlib
import re
import subprocess
import sys
import tarfile
import tempfile
import time

import torch

from rnnkit.bench import _Model, _build, _infer_jobs, _time_interleaved, _train_jobs, parse_script_arguments, parse_sizes

ROOT = pathlib.Path(__file__).resolve().parent.parent
NAME = "rnnkit_ab"


def _git(*args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True).stdout


def export(rev: str) -> pathlib.Path:
    """The revision's src/rnnkit as the package rnnkit_ab in a directory of its own (made once); the
    directory to put on sys.path."""
    commit = _git("rev-parse", "--verify", f"{rev}^{{commit}}").decode().strip()
    home = pathlib.Path(tempfile.gettempdir()) / "rnnkit-ab" / commit
    package = home / NAME
    if not package.exists():
        staging = home.with_name(commit + ".tmp")
        staging.mkdir(parents=True, exist_ok=True)
        archive = staging / "src.tar"
        archive.write_bytes(_git("archive", commit, "src/rnnkit"))
        with tarfile.open(archive) as tar:
            tar.extractall(staging, filter="data")
        source = staging / "src" / "rnnkit"
        for path in source.rglob("*.py"):  # the rename holds only with relative imports
            if re.search(r"^(from rnnkit[ .]|import rnnkit\b)", path.read_text(), re.MULTILINE):
                raise SystemExit(f"{rev}: {path.relative_to(staging)} imports rnnkit by name")
        home.mkdir(parents=True, exist_ok=True)
        os.replace(source, package)
    return home


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the git revision to compare this tree with (e.g. HEAD~1)")
    parser.add_argument("--infer", action="store_true", help="time inference (a forward under no_grad) instead")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: the main thread's CPU time, torch on one thread (as rnnkit bench --clock cpu)")
    args = parse_script_arguments(parser)
    clock = time.perf_counter
    if args.clock == "cpu":
        torch.set_num_threads(1)
        clock = time.thread_time
    sys.path.insert(0, str(export(args.rev)))
    other = importlib.import_module(f"{NAME}.layers")
    importlib.import_module(f"{NAME}.kernels").precompile()  # ~45 s the first time, then loaded
    layers = {"rnn": other.RNN, "gru": other.GRU, "lstm": other.LSTM}
    what = "inference" if args.infer else "train step"
    print(f"{torch.get_num_threads()} threads, {args.clock} clock; {what} in ms, median of {args.rounds} interleaved rounds; "
          f"'{args.rev}' against this tree")
    print(f"{'cell':<5} {'B':>4} {'T':>4} {'H':>4} {'rev':>8} {'tree':>8} {'torch':>8}  {'x torch rev':>11} "
          f"{'x torch tree':>12} {'tree/rev':>8}")
    for B, T, H in parse_sizes(args.sizes):
        x, y = torch.randn(B, T, 1), torch.randn(B, 1)
        for cell in args.cells.split(","):
            torch.manual_seed(0)
            models = {"tree": _build(cell, "fused", H, None)}
            models["rev"] = _Model(layers[cell](1, H, batch_first=True, engine="fused"), H)
            models["rev"].load_state_dict(models["tree"].state_dict())
            models["torch"] = _build(cell, "torch", H, models["tree"])
            jobs = _infer_jobs(models, x) if args.infer else _train_jobs(models, x, y)
            ms = {k: v * 1e3 for k, v in _time_interleaved(jobs, args.rounds, 0.06, clock, alternate=True).items()}
            print(f"{cell:<5} {B:>4} {T:>4} {H:>4} {ms['rev']:>8.3f} {ms['tree']:>8.3f} {ms['torch']:>8.3f}  "
                  f"{ms['torch'] / ms['rev']:>11.2f} {ms['torch'] / ms['tree']:>12.2f} "
                  f"{ms['tree'] / ms['rev']:>8.3f}", flush=True)


if __name__ == "__main__":
    main()
