"""Running a compiled body over a block: on this thread, as a team of torch's OpenMP threads, or on a
pool of Python threads; and the failure a thread reported, raised.

A body (rnnkit.kernels.build) takes its shards from the block itself, one at a time, so any number
of threads may run it: one shard runs on the calling thread; several, with MKL and torch's OpenMP
runtime, as an OpenMP team (``GOMP_parallel`` starts the compiled body on each thread without
Python: a ctypes callback on each thread would take the GIL on every one, at ten times the cost);
else on this thread and the pool's threads, each
calling the body through ctypes (which releases the GIL). A thread that finds no shard left
returns, so a team smaller than asked for, or a pool busy with another call, still runs every
shard. After the threads return, a status other than OK in the block (an exception in a shard, or a
wait past its bound) raises :class:`WorkerError`.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, NamedTuple

import torch

from . import blas, compiled
from .layout import RAISED, WAITED_TOO_LONG

# The seconds a wait of a unit-sharded call polls without seeing a task done before it aborts the
# call (module attribute: the tests shorten it)
WAIT_LIMIT_S = 60


class WorkerError(RuntimeError):
    """A thread of the fused engine failed, or waited past its bound for another thread's step:
    the call's results are not computed."""


class Team(NamedTuple):
    parallel: Callable  # GOMP_parallel(body address, data address, threads, flags)


@functools.cache
def openmp() -> Team | None:
    """torch's own OpenMP runtime (its libgomp), or None."""
    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libgomp.so.1")
    if not os.path.exists(path):
        return None
    lib = ctypes.CDLL(path)
    if not hasattr(lib, "GOMP_parallel"):
        return None
    lib.GOMP_parallel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    lib.GOMP_parallel.restype = None
    return Team(lib.GOMP_parallel)


@functools.cache
def libc() -> tuple[int, int]:
    """The addresses of libc's sched_yield and time, which the waits call."""
    lib = ctypes.CDLL(None)
    return blas._address(lib.sched_yield), blas._address(lib.time)


_pool: tuple[int, int, ThreadPoolExecutor] | None = None
_pool_lock = threading.Lock()


def _one_blas_thread() -> None:
    setter = blas.blas().set_threads
    if setter is not None:
        setter(1)


def _executor(workers: int) -> ThreadPoolExecutor:
    """The pool's threads: made on first use, again after a fork (a child has none of the parent's
    threads) or when torch's thread count grew."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid() or _pool[1] < workers:
            if _pool is not None and _pool[0] == os.getpid():
                _pool[2].shutdown(wait=False)  # idle between calls: its threads just end
            _pool = (os.getpid(), workers,
                     ThreadPoolExecutor(workers, "rnnkit-shard", initializer=_one_blas_thread))
        return _pool[2]


def start(body: int, block, threads: int, through_blas: bool = False) -> None:
    """Run the body at address ``body`` over ``block`` (a rnnkit.kernels.layout.Block, pointed at
    the call's arrays) on ``threads`` threads (one per shard), then raise what a thread reported.
    ``through_blas``: the loops call BLAS, whose threads are set to one around them."""
    run = compiled.caller(body)
    if threads == 1:
        setter = blas.blas().set_threads if through_blas and blas.blas().name != "mkl" else None
        old = setter(1) if setter is not None else None  # (MKL's: the body sets them)
        try:
            run(block.address)
        finally:
            if setter is not None:
                setter(old)
    elif blas.blas().name == "mkl" and openmp() is not None:
        openmp().parallel(body, block.address, threads, 0)
    else:
        futures = [_executor(threads - 1).submit(run, block.address) for _ in range(threads - 1)]
        try:
            run(block.address)
        finally:
            for f in futures:
                f.result()
    status = block.status
    if status:
        raise WorkerError({RAISED: "a thread of rnnkit's fused engine raised an exception",
                           WAITED_TOO_LONG: "a thread of rnnkit's fused engine waited past its bound for another "
                                            "thread's step"}.get(int(status), f"rnnkit's fused engine failed ({status})")
                          + "; the layer's results were not computed")


def header(block, plan, gemm: int) -> None:
    """Write the header slots every call of a block shares (but its shapes and scratch)."""
    sched_yield, time_ = libc()
    block["parties"] = plan.parties
    block["gemm"] = gemm
    block["set_threads"] = blas.blas().set_threads_address
    block["sched_yield"], block["time"] = sched_yield, time_
    block["wait_limit"] = WAIT_LIMIT_S

