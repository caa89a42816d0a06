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
from rnnkit.kernels import buffers, fused
from rnnkit.kernels.plan import Plan


def _loops(cell: str, B: int, T: int, H: int) -> dict:
    """{"forward"/"backward": (plan -> a launch of that loop, the call's arrays)}: the loops of one
    forward and backward of a fused layer, as the engine launched them."""
    made, got = {}, {}
    init, call = fused._Launch.__init__, fused._Launch.__call__

    def keep_init(self, cell_, op, reverse, plan, shapes, dtype, project=False):
        init(self, cell_, op, reverse, plan, shapes, dtype, project)
        made[id(self)] = op, lambda p: fused._Launch(cell_, op, reverse, p, shapes, dtype, project)

    def keep_call(self, tensors):
        op, relaunch = made[id(self)]
        got.setdefault(("forward", "backward")[op], (relaunch, list(tensors)))
        return call(self, tensors)

    buffers.release()  # (every launch made anew, so that it is seen)
    fused._Launch.__init__, fused._Launch.__call__ = keep_init, keep_call
    try:
        out, _ = _build(cell, "fused", H, None).rnn(torch.randn(B, T, 1))
        out[:, -1].sum().backward()
    finally:
        fused._Launch.__init__, fused._Launch.__call__ = init, call
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
        first, both = Plan(((0, half, 0, H),), 1), Plan(((0, half, 0, H), (half, B, 0, H)), 1)
        for cell in args.cells.split(","):
            for name, (launch, tensors) in _loops(cell, B, T, H).items():
                # (both halves write the sums' row of the one shard the call was planned with: the
                # numbers are wrong, the time is the loops')
                one, two = launch(first), launch(both)
                halves = []
                for core in cores:
                    os.sched_setaffinity(0, {core})
                    halves.append(_median_us(lambda: one(tensors), args.rounds))
                row = [f"core {core} {t:7.1f}" for core, t in zip(cores, halves)]
                os.sched_setaffinity(0, cores)
                team = _median_us(lambda: two(tensors), args.rounds)
                print(f"{cell:4s} B{B} T{T} H{H} {name:8s} half the rows: {'  '.join(row)}   team {team:7.1f}"
                      f"   team/half {team / min(halves):.2f}", flush=True)


if __name__ == "__main__":
    main()
