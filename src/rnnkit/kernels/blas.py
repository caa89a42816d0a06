"""The BLAS the compiled loops call, how many threads it and the loops use, and the thread pool.

The loops run each step's matrix product (B x H by H x G*H, T times in a row) themselves, over
W_hh packed once per call (:mod:`rnnkit.kernels.loops`); only a W_hh over ``loops.PACKED_MAX_BYTES``
goes to a BLAS (benchmarks/README.md has the measurements):

* **MKL** from torch's own library (``libtorch_cpu`` exports MKL's Fortran ``sgemm_``/``dgemm_`` on
  x86-64 Linux), the BLAS torch.nn itself runs on: 10-40% faster than OpenBLAS single-threaded at
  these shapes.
* **scipy's OpenBLAS** (``scipy.linalg.cython_blas``) everywhere else.

``RNNKIT_BLAS=scipy`` forces the second (the tests run both). The choice is checked once on a small
product against numpy before it is used. Every product runs on one BLAS thread; the threads are the
loops' own. Which BLAS there is also decides how the threads are shared out, below.

Threads (:func:`plan`), following ``torch.get_num_threads()``: small layers run on one thread
throughout (a thread hand-off costs more than their step). Bigger ones are split into *shards* that
each run the whole time loop (the loops release the GIL):

* with MKL, by **batch rows** (rows never meet), and for the biggest steps (or too few rows) by
  **hidden units**: each thread computes its units' rows of every gate, reading only its share of
  W_hh, which stays in its own core's cache, and waits for the others' last step once per step
  (oneDNN's scheme; MKL's own threads re-split each step's product). A thread that finishes its
  share takes over the share of a thread that has not started it (one that lost its core to another
  process), step by step, with the same arithmetic. Both run as a team of torch's own OpenMP runtime
  (:func:`_openmp`) whose threads start compiled bodies without Python (rnnkit.kernels.team):
  threads of our own lost their core to torch's OpenMP workers, which spin for a while after each of
  torch's parallel operations.
* with OpenBLAS, or without torch's OpenMP runtime, on a small pool of Python threads: by batch rows
  (with OpenBLAS), or by hidden units.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, NamedTuple

import numpy as np
import torch

# Per-step multiply-adds (rows x G*H x H) from which the work is split: measured crossovers on the
# 2-core dev machine (benchmarks/README.md). Module attributes so that tests can force each path.
SHARD_MIN_WORK = 256 * 1024  # row shards on the pool's threads (OpenBLAS)
SHARD_MIN_ROWS = 8
TEAM_ROWS_MIN_WORK = 32 * 1024  # row shards on an OpenMP team (MKL)
UNITS_MIN_WORK = 1024 * 1024  # unit shards, where there are too few rows to split
UNITS_OVER_ROWS_WORK = 32 * 1024 * 1024  # unit shards rather than row shards
UNITS_ALIGN = 8  # unit shards start on multiples of this (a vector of float32)


class Blas(NamedTuple):
    name: str  # "mkl" or "openblas"
    gemm: dict  # numpy dtype -> address of the Fortran ?gemm_
    set_threads: Callable[[int], int] | None  # this thread's BLAS threads; returns the old count
    set_threads_address: int  # of MKL's MKL_Set_Num_Threads_Local (0 for OpenBLAS)


def _mkl() -> Blas | None:
    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    if not os.path.exists(path):
        return None
    lib = ctypes.CDLL(path)  # already loaded by torch: the same handle
    names = ("sgemm_", "dgemm_", "MKL_Set_Num_Threads_Local")
    if not all(hasattr(lib, n) for n in names):
        return None
    setter = lib.MKL_Set_Num_Threads_Local
    setter.argtypes, setter.restype = [ctypes.c_int], ctypes.c_int
    addr = {np.dtype(np.float32): _address(lib.sgemm_), np.dtype(np.float64): _address(lib.dgemm_)}
    return Blas("mkl", addr, setter, _address(setter))


def _openblas() -> Blas:
    import scipy.linalg.cython_blas as cb

    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.argtypes, get_name.restype = [ctypes.py_object], ctypes.c_char_p
    get_ptr = ctypes.pythonapi.PyCapsule_GetPointer
    get_ptr.argtypes, get_ptr.restype = [ctypes.py_object, ctypes.c_char_p], ctypes.c_void_p
    addr = {}
    for dtype, name in ((np.float32, "sgemm"), (np.float64, "dgemm")):
        capsule = cb.__pyx_capi__[name]
        addr[np.dtype(dtype)] = get_ptr(capsule, get_name(capsule))
    setters = _openblas_setters()

    def set_threads(n: int) -> int:
        old = [s(n) for s in setters]
        return old[0] if old else 1

    return Blas("openblas", addr, set_threads if setters else None, 0)


def _openblas_setters() -> tuple:
    """openblas_set_num_threads_local of every loaded OpenBLAS (numpy and scipy each bring one), or
    none (another BLAS, or no /proc to find them in)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return ()
    setters = (getattr(ctypes.CDLL(path), "openblas_set_num_threads_local", None) for path in sorted(paths))
    return tuple(s for s in setters if s is not None)


def _address(fn) -> int:
    return ctypes.cast(fn, ctypes.c_void_p).value


def _works(blas: Blas) -> bool:
    """Compute a small row-major X W^T through the Fortran interface, as the loops call it, and
    compare with numpy, in both dtypes."""
    vp, I32 = ctypes.c_void_p, ctypes.c_int32
    for dtype, addr in blas.gemm.items():
        gen = np.random.default_rng(0)
        x, w = gen.standard_normal((3, 4)).astype(dtype), gen.standard_normal((5, 4)).astype(dtype)
        out = np.zeros((3, 5), dtype)
        ints = [I32(v) for v in (5, 3, 4, 4, 4, 5)]  # m, n, k, lda, ldb, ldc
        alpha, beta = np.ones(1, dtype), np.zeros(1, dtype)
        fn = ctypes.CFUNCTYPE(None, *[vp] * 13)(addr)
        fn(ctypes.c_char_p(b"T"), ctypes.c_char_p(b"N"), *map(ctypes.byref, ints[:3]), alpha.ctypes.data,
           w.ctypes.data, ctypes.byref(ints[3]), x.ctypes.data, ctypes.byref(ints[4]), beta.ctypes.data,
           out.ctypes.data, ctypes.byref(ints[5]))
        if not np.allclose(out, x @ w.T, rtol=1e-5, atol=1e-5):
            return False
    return True


@functools.cache
def blas() -> Blas:
    """The BLAS of the loops (see the module docstring)."""
    if os.environ.get("RNNKIT_BLAS", "").lower() != "scipy":
        found = _mkl()
        if found is not None and _works(found):
            return found
    return _openblas()


class Plan(NamedTuple):
    shards: tuple  # ((b0, b1, j0, j1), ...) batch rows and hidden units, one per thread
    parties: int  # threads that share each step's tasks: len(shards) for unit shards, else 1


def plan(B: int, H: int, GH: int) -> Plan:
    """How to run a layer of B rows, hidden size H and G*H gate rows on this many threads (see the
    module docstring), from the per-step multiply-adds: with MKL, batch-row shards on an OpenMP team
    from 32K (they never meet; measured 8-20% off the train step at B32 T50 H32 for GRU and LSTM)
    and hidden-unit shards from 32M, where rows and units measured the same (or from 1M when there
    are too few rows to split); with OpenBLAS, row shards on the pool's threads from 256K; one
    thread below (benchmarks/README.md). Made once per shape and setting."""
    return _plan(B, H, GH, torch.get_num_threads(), blas().name, _openmp() is not None,
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


_pool: tuple[int, int, ThreadPoolExecutor] | None = None
_pool_lock = threading.Lock()


def _one_blas_thread() -> None:
    setter = blas().set_threads
    if setter is not None:
        setter(1)


def _executor(workers: int) -> ThreadPoolExecutor:
    """The shard threads: made on first use, again after a fork (a child has none of the parent's
    threads) or when torch's thread count grew."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid() or _pool[1] < workers:
            if _pool is not None and _pool[0] == os.getpid():
                _pool[2].shutdown(wait=False)  # idle between calls: its threads just end
            _pool = (os.getpid(), workers,
                     ThreadPoolExecutor(workers, "rnnkit-shard", initializer=_one_blas_thread))
        return _pool[2]


@functools.cache
def _libc() -> tuple[int, int]:
    """The addresses of libc's sched_yield and time, which the loops' waits call."""
    libc = ctypes.CDLL(None)
    return _address(libc.sched_yield), _address(libc.time)


# The tasks-done count of a call whose waits all return at once (rnnkit.kernels.loops._wait), and
# the seconds a wait polls without seeing a task done before it gives up (module attributes: the
# tests shorten it)
ABORTED = 1 << 62
WAIT_LIMIT_S = 60


_ALONE = np.zeros(2, np.int64)  # the sync of a loop without parties (never read)
_ALONE_ADDRESS = _ALONE.ctypes.data


class Team(NamedTuple):
    parallel: Callable  # GOMP_parallel(body address, data address, threads, flags)
    thread_num: int  # address of omp_get_thread_num
    num_threads: int  # address of omp_get_num_threads


@functools.cache
def _openmp() -> Team | None:
    """torch's own OpenMP runtime, or None. Shards run as a team of torch's OpenMP threads, each
    starting a compiled body without Python (rnnkit.kernels.team): threads of our own would compete
    for the cores with torch's, which spin for a while after each of torch's parallel operations."""
    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libgomp.so.1")
    if not os.path.exists(path):
        return None
    lib = ctypes.CDLL(path)
    if not all(hasattr(lib, n) for n in ("GOMP_parallel", "omp_get_thread_num", "omp_get_num_threads")):
        return None
    lib.GOMP_parallel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    lib.GOMP_parallel.restype = None
    return Team(lib.GOMP_parallel, _address(lib.omp_get_thread_num), _address(lib.omp_get_num_threads))


def team_sync(p: Plan) -> np.ndarray:
    """The shared state of one unit-sharded call (see rnnkit.kernels.loops, above ``_wait``): tasks
    done, sched_yield, each shard's next unclaimed phase, the shards' unit edges, time, the waits'
    bound in seconds."""
    edges = [j0 for _, _, j0, _ in p.shards] + [p.shards[-1][3]]
    sched_yield, time = _libc()
    return np.array([0, sched_yield] + [0] * p.parties + edges + [time, WAIT_LIMIT_S], np.int64)


def _open_waits(sync: np.ndarray) -> None:
    """After a party failed, perhaps in the middle of a task: every wait of the call returns at once,
    so the other parties stop instead of waiting for that task."""
    if sync is not _ALONE:  # row shards never wait
        sync[0] = ABORTED


class WorkerError(RuntimeError):
    """A thread of the fused engine failed (or waited past its bound for another): the call's
    results are not written."""


def check_team(block: np.ndarray) -> None:
    """Raise :class:`WorkerError` where a team (rnnkit.kernels.team) reported a failure in its block."""
    status = block[team_status_slot()]
    if status:
        what = {1: "raised an exception", 2: "waited past its bound for another thread's step"}.get(
            int(status), f"failed ({int(status)})")
        raise WorkerError(f"a thread of rnnkit's fused engine {what}; the layer's results were not computed")


@functools.cache
def team_status_slot() -> int:
    from . import team

    return team.STATUS


def _party(loop: Callable, args: tuple, shard: tuple) -> None:
    try:
        loop(*args, *shard)
    except BaseException:
        _open_waits(shard[4])
        raise


def _run_pool(loop: Callable, args: tuple, shards: list) -> None:
    """Run the shards on this thread (the first) and the pool's (the others); the first failure is
    raised once all have returned."""
    futures = [_executor(len(shards) - 1).submit(_party, loop, args, shard) for shard in shards[1:]]
    try:
        _party(loop, args, shards[0])
    finally:
        for f in futures:
            f.result()


def team_body(loop: Callable, dtype: np.dtype) -> int | None:
    """The address of the team body that runs ``loop`` on arrays of ``dtype``, where loops run as
    teams of torch's OpenMP threads (MKL and torch's OpenMP runtime, see :func:`run_sharded`);
    None where they run from Python, or for a loop without one (tests pass wrapped loops)."""
    if blas().name != "mkl" or _openmp() is None:
        return None
    return _bodies().get((loop, dtype))


@functools.cache
def _bodies() -> dict:
    """(loop, dtype) -> address of its team body (imported on first use: the bodies compile or load
    then)."""
    from . import team

    return {(loop, dtype): address for loop, (_, by_dtype) in team.BODIES.items()
            for dtype, address in by_dtype.items()}


def team_block(loop: Callable, args: tuple, p: Plan, body: int | None, sync: np.ndarray) -> tuple | None:
    """(block, its address, body, its slots) of a team running ``loop(*args, shard...)`` on the
    plan's shards (rnnkit.kernels.team) with the body ``team_body(loop, dtype)`` and the sync array
    ``sync`` (which the caller holds while the team runs: :func:`sync_address`), or None for no body
    (the loop runs from Python). The block holds the addresses of args' arrays and of a sync array:
    :func:`rnnkit.kernels.team.point` moves them (through the slots) to another call's arrays of
    the same shapes."""
    if body is None:
        return None
    from . import team

    team_ = _openmp()
    calls = np.array([team_.thread_num, team_.num_threads, blas().set_threads_address], np.int64)
    block = team.BODIES[loop][0](*args, np.array(p.shards, np.int64), sync, p.parties, calls)
    return block, block.ctypes.data, body, team.slots(block)


def sync_address(p: Plan) -> tuple:
    """(sync array, its address) for one call under the plan: a fresh :func:`team_sync` for unit
    shards, else the shared one that no loop reads."""
    if p.parties == 1:
        return _ALONE, _ALONE_ADDRESS
    sync = team_sync(p)
    return sync, sync.ctypes.data


def start(body: int, block_address: int, p: Plan) -> None:
    """Run a team block (see :func:`team_block`) on as many threads as the plan has shards; its
    body sets each thread's MKL to one thread."""
    _openmp().parallel(body, block_address, len(p.shards), 0)


def run_sharded(loop: Callable, args: tuple, p: Plan) -> None:
    """``loop(*args, b0, b1, j0, j1, sync, parties)`` for every shard of the plan, with a one-thread
    BLAS each: as a team of torch's OpenMP threads where there is one and the BLAS is MKL (whose
    threads the team's bodies can set), else on this thread and the pool's. (Called twice per layer
    and step of training: no context manager, which costs more than the small loops.)"""
    sync, _ = sync_address(p)
    if len(p.shards) > 1:
        found = team_block(loop, args, p, team_body(loop, args[2].dtype), sync)
        if found is not None:
            start(found[2], found[1], p)
            check_team(found[0])
            return
    b = blas()
    setter = b.set_threads
    old = setter(1) if setter is not None else None
    try:
        if len(p.shards) == 1:
            b0, b1, j0, j1 = p.shards[0]
            loop(*args, b0, b1, np.uint64(j0), np.uint64(j1), _ALONE, 1)
        else:  # a party the pool starts late (busy with another call) finds its tasks done
            _run_pool(loop, args, [(b0, b1, np.uint64(j0), np.uint64(j1), sync, p.parties)
                                   for b0, b1, j0, j1 in p.shards])
            if sync[0] >= ABORTED:  # (no party raised: a wait gave up)
                raise WorkerError("a thread of rnnkit's fused engine waited past its bound for another "
                                  "thread's step; the layer's results were not computed")
    finally:
        if setter is not None:
            setter(old)
