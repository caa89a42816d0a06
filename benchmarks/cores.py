"""How much a second thread gives the fused loops on this machine: one row shard's forward and backward
loops (half the batch, every step) timed on one thread pinned to each core in turn, then both halves
as the two-thread team that a split layer uses. ``team/half`` is 1.0 when the two threads run as two
whole cores and 2.0 when they run no faster than one. On a virtual machine that ratio can change from
one run to the next (two virtual CPUs may share one physical core), and so does every two-thread
timing, torch.nn's included.

    .venv/bin/python benchmarks/cores.py                         # RNN and LSTM at B32 T50 H32
    .venv/bin/python benchmarks/cores.py --sizes 64x200x128 --cells lstm
"""

from __future__ import annotations

import argparse
import os

import torch

from rnnkit.bench import _build, _time_interleaved, parse_sizes
from rnnkit.kernels import blas


def _loops(cell: str, B: int, T: int, H: int) -> dict:
    """{loop name: (loop, args)} of one forward and backward of a fused layer, as run_sharded got them."""
    got = {}
    run = blas.run_sharded

    def keep(loop, args, plan):
        got[loop.__name__] = (loop, args)
        return run(loop, args, plan)

    blas.run_sharded = keep
    try:
        out, _ = _build(cell, "fused", H, None).rnn(torch.randn(B, T, 1))
        out[:, -1].sum().backward()
    finally:
        blas.run_sharded = run
    return got


def _median_us(job, rounds: int) -> float:
    return _time_interleaved({"job": job}, rounds, 0.02)["job"] * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="32x50x32")
    parser.add_argument("--cells", default="rnn,lstm")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    torch.set_num_threads(2)
    print(f"cores {cores}; median µs of {args.rounds} rounds; 'team' runs both halves on two threads")
    for B, T, H in parse_sizes(args.sizes):
        half = B // 2
        first, both = blas.Plan([(0, half, 0, H)], 1), blas.Plan([(0, half, 0, H), (half, B, 0, H)], 1)
        for cell in args.cells.split(","):
            for name, (loop, largs) in _loops(cell, B, T, H).items():
                halves = []
                for core in cores:
                    os.sched_setaffinity(0, {core})
                    halves.append(_median_us(lambda: blas.run_sharded(loop, largs, first), args.rounds))
                row = [f"core {core} {t:7.1f}" for core, t in zip(cores, halves)]
                os.sched_setaffinity(0, cores)
                team = _median_us(lambda: blas.run_sharded(loop, largs, both), args.rounds)
                print(f"{cell:4s} B{B} T{T} H{H} {name:8s} half the rows: {'  '.join(row)}   team {team:7.1f}"
                      f"   team/half {team / min(halves):.2f}", flush=True)


if __name__ == "__main__":
    main()
