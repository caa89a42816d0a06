"""`rnnkit bench`: train-step and inference times of rnnkit's engines against torch.nn, on this machine.

For each cell (RNN, GRU, LSTM) and size (batch, steps, hidden) it times three implementations of
the same model — a recurrent layer with input size 1 and a Linear(H, 1) head on the last step's h —
in one process: rnnkit with the fused engine, rnnkit with the reference loop, and torch.nn. A train
step is forward + MSE loss + backward + Adam (torch's single-kernel ``fused=True`` Adam, the one
rnnkit's trainer uses, for every implementation alike); inference is a forward pass under
``torch.no_grad``.
Implementations are timed in interleaved rounds (so drifting clocks and caches hit all of them alike),
every other round in reverse order (a job's time moves by 1-3% with the job run before it), and each
reports the median round. The ratio column is torch.nn's time over this row's, so > 1 means
faster than torch.nn. GFLOP/s counts the layer's matrix products (forward 2·B·T·G·H·(I+H); a train
step three times that) against a large-GEMM peak measured here first. The header names the CPU:
the fused engine's ratios depend on its vector units (:func:`machine`).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch
from torch import nn

from . import layers
from .errors import ConfigError
from .kernels.build import vector_bytes

CELLS = ("rnn", "gru", "lstm")
IMPLS = ("fused", "reference", "torch")
DEFAULT_SIZES = "32x50x32,64x200x128,32x50x256"
TORCH_LAYERS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
RNNKIT_LAYERS = {"rnn": layers.RNN, "gru": layers.GRU, "lstm": layers.LSTM}
GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default=DEFAULT_SIZES,
                        help="comma-separated BATCHxSTEPSxHIDDEN sizes (default: %(default)s)")
    parser.add_argument("--cells", default=",".join(CELLS),
                        help="comma-separated cells among rnn, gru, lstm (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="interleaved timing rounds; the median is reported (default: %(default)s)")
    parser.add_argument("--round-ms", type=float, default=60.0,
                        help="target time of one implementation's share of a round (default: %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="3 rounds of ~20 ms: a rough table in a fraction of the time")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (default: torch's choice); 1 is steadier on a shared machine")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: elapsed time; cpu: the main thread's CPU time, with torch on one "
                             "thread, so other processes on a shared machine barely move it")


class _Model(nn.Module):
    """The benchmark's model: recurrent layer (batch-first) and a Linear(H, 1) on the last h."""

    def __init__(self, layer: nn.Module, hidden: int) -> None:
        super().__init__()
        self.rnn = layer
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])  # (B, 1)


def _build(cell: str, impl: str, hidden: int, like: _Model | None) -> _Model:
    if impl == "torch":
        layer = TORCH_LAYERS[cell](1, hidden, batch_first=True)
    else:
        layer = RNNKIT_LAYERS[cell](1, hidden, batch_first=True, engine=impl)
    model = _Model(layer, hidden)
    if like is not None:
        model.load_state_dict(like.state_dict())  # same weights in every implementation
    return model


def _train_step(model: _Model, opt: torch.optim.Optimizer, x, y) -> None:
    opt.zero_grad(set_to_none=True)
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()


def _train_jobs(models: dict, x, y) -> dict:
    """A train step of each model as a no-argument job, each with its own Adam(fused=True)."""
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-3, fused=True) for k, m in models.items()}
    return {k: (lambda m=m, o=opts[k]: _train_step(m, o, x, y)) for k, m in models.items()}


def _infer(model: _Model, x) -> None:
    with torch.no_grad():
        model(x)


def _infer_jobs(models: dict, x) -> dict:
    """An inference (a forward under no_grad) of each model as a no-argument job."""
    return {k: (lambda m=m: _infer(m, x)) for k, m in models.items()}


def gemm_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """GFLOP/s of torch.mm on n x n matrices: the machine's practical matmul peak."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / min(times) / 1e9


def _time_interleaved(jobs: dict, rounds: int, round_s: float, clock=time.perf_counter,
                      alternate: bool = False) -> dict:
    """Median seconds per call of each job (a no-argument callable), over interleaved rounds; with
    ``alternate``, every other round runs the jobs in reverse order (a job's time depends on the job
    before it by a few percent: benchmarks/ab.py)."""
    reps = {}
    for name, job in jobs.items():
        job()  # warm-up: first-call compile, allocator, Adam state
        t0 = clock()
        job()
        reps[name] = max(1, int(round_s / max(clock() - t0, 1e-6)))
    samples: dict = {name: [] for name in jobs}
    for r in range(rounds):
        for name, job in (reversed(jobs.items()) if alternate and r % 2 else jobs.items()):
            t0 = clock()
            for _ in range(reps[name]):
                job()
            samples[name].append((clock() - t0) / reps[name])
    return {name: statistics.median(s) for name, s in samples.items()}


def parse_script_arguments(parser: argparse.ArgumentParser, sizes: str = "32x50x32", threads: int = 0):
    """The options of the benchmarks/ scripts that time train steps (--sizes, --cells, --rounds,
    --threads), parsed, with torch's threads set; the parsed arguments."""
    parser.add_argument("--sizes", default=sizes, help="BATCHxSTEPSxHIDDEN[,...] (default: %(default)s)")
    parser.add_argument("--cells", default=",".join(CELLS))
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=threads, help="torch threads (0: torch's choice)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    return args


def parse_sizes(text: str) -> list[tuple[int, int, int]]:
    try:
        sizes = [tuple(int(v) for v in part.lower().split("x")) for part in text.split(",") if part]
    except ValueError:
        sizes = []
    if not sizes or any(len(s) != 3 or min(s) < 1 for s in sizes):
        raise ConfigError(f"--sizes wants BATCHxSTEPSxHIDDEN[,...] with positive integers, got {text!r}")
    return sizes  # type: ignore[return-value]


def parse_cells(text: str) -> list[str]:
    cells = [c.strip().lower() for c in text.split(",") if c.strip()]
    if not cells or any(c not in CELLS for c in cells):
        raise ConfigError(f"--cells wants a comma-separated list among {', '.join(CELLS)}, got {text!r}")
    return cells


def machine() -> str:
    """The CPU, as far as the ratios depend on it: a table's numbers move with the CPU's vector units
    (a Zen 4 runs 64-byte vectors as two halves, a Zen 5 whole: benchmarks/README.md, twelfth pass)."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if not line.strip():
                    break  # the first processor's block
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = info.get("model name") or platform.processor() or platform.machine()
    family = ""
    if "cpu family" in info and "model" in info:
        family = f" (family {info['cpu family']}, model {info['model']})"
    return f"{name}{family}, {os.cpu_count()} CPUs; fused loops' vectors {vector_bytes()} bytes"


def run(args) -> int:
    sizes = parse_sizes(args.sizes)
    cells = parse_cells(args.cells)
    for flag, value, ok, wants in (("--rounds", args.rounds, args.rounds >= 1, "1 or more"),
                                   ("--round-ms", args.round_ms, args.round_ms > 0, "a positive time"),
                                   ("--threads", args.threads, args.threads >= 0, "0 (torch's choice) or more")):
        if not ok:
            raise ConfigError(f"{flag} wants {wants}, got {value}")
    rounds, round_s = (3, 0.02) if args.quick else (args.rounds, args.round_ms / 1000)
    dtype = getattr(torch, args.dtype)
    clock = time.perf_counter
    if args.clock == "cpu":
        clock = time.thread_time  # counts all the work only when nothing runs on other threads
        args.threads = 1
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.set_default_dtype(dtype)
    peak = gemm_peak(dtype)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}, {args.clock} clock; "
          f"large-GEMM peak (torch.mm 2048x2048): {peak:.0f} GFLOP/s")
    print(machine())
    print(f"{'cell':<5} {'B':>4} {'T':>4} {'H':>4}  {'engine':<9} {'train ms':>9} {'x torch':>8} "
          f"{'GFLOP/s':>8}  {'infer ms':>9} {'x torch':>8} {'GFLOP/s':>8}")
    for B, T, H in sizes:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(B, T, 1, generator=gen)
        y = torch.randn(B, 1, generator=gen)
        for cell in cells:
            torch.manual_seed(0)
            models: dict = {}
            for impl in IMPLS:
                models[impl] = _build(cell, impl, H, models.get("fused"))
            train = _time_interleaved(_train_jobs(models, x, y), rounds, round_s, clock, alternate=True)
            infer = _time_interleaved(_infer_jobs(models, x), rounds, round_s, clock, alternate=True)
            flops = 2 * B * T * GATES[cell] * H * (1 + H)
            for impl in IMPLS:
                print(f"{cell:<5} {B:>4} {T:>4} {H:>4}  {impl:<9} {train[impl] * 1e3:>9.2f} "
                      f"{train['torch'] / train[impl]:>8.2f} {3 * flops / train[impl] / 1e9:>8.1f}  "
                      f"{infer[impl] * 1e3:>9.2f} {infer['torch'] / infer[impl]:>8.2f} "
                      f"{flops / infer[impl] / 1e9:>8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m rnnkit.bench", description=__doc__.split("\n")[0])
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
