"""How a call is split between threads, following ``torch.get_num_threads()``.

Small layers run on one thread throughout (a hand-off costs more than their step). Bigger ones are
split into *shards* that each run the whole time loop (the loops release the GIL):

* with MKL and torch's OpenMP runtime, by **batch rows** (rows never meet), and for the biggest
  steps (or too few rows) by **hidden units**: each thread computes its units' rows of every gate,
  reading only its share of W_hh, which stays in its own core's cache, and waits for the others'
  last step once per step (oneDNN's scheme); a thread that finishes its share takes over the share
  of one that has not started it (rnnkit.kernels.sync). Both run as a team of torch's own OpenMP
  threads (rnnkit.kernels.launch): threads of our own lost their cores to torch's OpenMP workers,
  which spin for a while after each of torch's parallel operations.
* with OpenBLAS, or without torch's OpenMP runtime, on a small pool of Python threads: by batch rows
  (with OpenBLAS), or by hidden units.

The thresholds are per-step multiply-adds (rows x G*H x H), measured crossovers
(benchmarks/README.md); module attributes, so that tests can force each path.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

SHARD_MIN_WORK = 256 * 1024  # row shards on the pool's threads (OpenBLAS)
SHARD_MIN_ROWS = 8
TEAM_ROWS_MIN_WORK = 32 * 1024  # row shards on an OpenMP team (MKL)
UNITS_MIN_WORK = 1024 * 1024  # unit shards, where there are too few rows to split
UNITS_OVER_ROWS_WORK = 32 * 1024 * 1024  # unit shards rather than row shards
UNITS_ALIGN = 8  # unit shards start on multiples of this (a vector of float32)


class Plan(NamedTuple):
    shards: tuple  # ((b0, b1, j0, j1), ...) batch rows and hidden units, one per thread
    parties: int  # threads that share each step's tasks: len(shards) for unit shards, else 1


def plan(B: int, H: int, GH: int, recurrent: bool = True) -> Plan:
    """How to run a layer of B rows, hidden size H and G*H gate rows (see the module docstring):
    with MKL, batch-row shards on an OpenMP team from 32K multiply-adds a step (they never meet)
    and hidden-unit shards from
    32M, where rows and units measured the same (or from 1M when there are too few rows to split);
    with OpenBLAS, row shards on the pool's threads from 256K; one thread below, and for a cell
    without a recurrent matrix. Made once per shape and setting."""
    from . import blas, launch

    if not recurrent:
        return Plan(((0, B, 0, H),), 1)
    return _plan(B, H, GH, torch.get_num_threads(), blas.blas().name, launch.openmp() is not None,
                 (SHARD_MIN_WORK, SHARD_MIN_ROWS, TEAM_ROWS_MIN_WORK, UNITS_MIN_WORK, UNITS_OVER_ROWS_WORK,
                  UNITS_ALIGN))


@functools.lru_cache(maxsize=256)
def _plan(B: int, H: int, GH: int, threads: int, blas_name: str, openmp: bool, limits: tuple) -> Plan:
    shard_min_work, shard_min_rows, team_rows_min_work, units_min_work, units_over_rows_work, align = limits
    work = B * GH * H
    if blas_name == "mkl":
        rows = min(threads, B // shard_min_rows) if work >= team_rows_min_work and openmp else 1
        units = min(threads, H // align)
        if units > 1 and work >= (units_over_rows_work if rows > 1 else units_min_work):
            edges = [round(k * (H // align) / units) * align for k in range(units)] + [H]
            return Plan(tuple((0, B, j0, j1) for j0, j1 in zip(edges[:-1], edges[1:])), units)
    else:
        rows = min(threads, B // shard_min_rows) if work >= shard_min_work else 1
    edges = [round(k * B / rows) for k in range(rows + 1)] if rows > 1 else [0, B]
    return Plan(tuple((b0, b1, 0, H) for b0, b1 in zip(edges[:-1], edges[1:])), 1)
