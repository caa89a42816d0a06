"""The compiled loops as bodies of an OpenMP team, started without Python on the team's threads.

A team of torch's own OpenMP threads (``GOMP_parallel``) runs a compiled C function on every thread
with one pointer argument. Here that function is a numba ``cfunc`` per loop and dtype; its argument
is an int64 *block* that :func:`forward_block` / :func:`backward_block` fill (in compiled code) with
the loop's scalars, the address and shape of each of its arrays, the shards and the addresses of
``omp_get_thread_num``, ``omp_get_num_threads`` and MKL's ``MKL_Set_Num_Threads_Local``. Thread k of
a team of n runs shards k, k + n, ... with a one-thread MKL: a team smaller than asked for still
runs every shard (unit shards' tasks are taken over by whoever is running, rows simply in turn).

Started this way a team costs 1-3 µs; a ctypes callback into Python on each thread cost 20-25 µs,
because every thread had to take the GIL to start (benchmarks/README.md, fourth pass), which is
what made splitting small layers over threads a loss. The loops themselves are the ones in
:mod:`rnnkit.kernels.loops`, with the same arguments as when Python calls them.
"""

from __future__ import annotations

import hashlib

import numpy as np
from llvmlite import ir
from numba import carray, cfunc, njit, types
from numba.extending import intrinsic

from . import loops
from .loops import _JIT, _address

# Block layout: [length, kind, gemm, reverse, parties, shards, thread_num, -, num_threads,
# set_threads, sync length, sync address, status, fail, -], then (address, 3 dims) for each array,
# then (b0, b1, j0, j1) per shard (the sync address 4 slots before the first array's: see slots).
# status: 0, or what went wrong in a thread (1: an exception, 2: a wait past its bound), which the
# caller raises (rnnkit.kernels.blas.check_team); fail: the shard whose thread raises at its start
# (tests; -1 for none).
_HEAD = 15
_SYNC = 11
STATUS = 12
FAIL = 13
_FORWARD_ARRAYS = 13  # xp, hs, cs, acts, W_hh, b_hn, lengths, x, W_ih, b_ih, b_hh, h_init, c_init
# dy, dh, dc, hs, cs, xp, acts, W_hh, lengths, dG, grec, dan, drh, h_prev, x, sums, dh_n, dc_n, slot
_BACKWARD_ARRAYS = 19


@intrinsic
def _call_int(typingctx, fn):
    """Call the ``int f(void)`` at address ``fn``."""

    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(ir.IntType(32), [])
        return builder.sext(builder.call(builder.inttoptr(args[0], fnty.as_pointer()), []), ir.IntType(64))

    return types.int64(types.int64), codegen


@intrinsic
def _call_int_int(typingctx, fn, value):
    """Call the ``int f(int)`` at address ``fn``."""

    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(ir.IntType(32), [ir.IntType(32)])
        arg = builder.trunc(args[1], ir.IntType(32))
        return builder.sext(builder.call(builder.inttoptr(args[0], fnty.as_pointer()), [arg]), ir.IntType(64))

    return types.int64(types.int64, types.int64), codegen


@intrinsic
def _pointer(typingctx, addr, like):
    """The address ``addr`` as a pointer to values of the type of ``like``."""

    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], context.get_value_type(sig.return_type))

    return types.CPointer(like)(types.int64, like), codegen


@njit(**_JIT, inline="always")
def _put(block, at, arr):
    """Write arr's address and shape (padded to 3 dims) at ``at``; the next free slot."""
    block[at] = _address(arr)
    for d in range(3):
        block[at + 1 + d] = arr.shape[d] if d < arr.ndim else 1
    return at + 4


@njit(**_JIT, inline="always")
def _array1(block, at, like):
    return carray(_pointer(block[at], like), (block[at + 1],))


@njit(**_JIT, inline="always")
def _array2(block, at, like):
    return carray(_pointer(block[at], like), (block[at + 1], block[at + 2]))


@njit(**_JIT, inline="always")
def _array3(block, at, like):
    return carray(_pointer(block[at], like), (block[at + 1], block[at + 2], block[at + 3]))


@njit(**_JIT, inline="always")
def _head(n_arrays, kind, gemm, reverse, shards, sync, parties, calls):
    """A block with its scalars written (``calls``: thread_num, num_threads, set_threads)."""
    n = len(shards)
    block = np.empty(_HEAD + 4 * n_arrays + 4 * n, np.int64)
    block[0], block[1], block[2], block[3], block[4], block[5] = len(block), kind, gemm, reverse, parties, n
    block[6], block[8], block[9] = calls[0], calls[1], calls[2]
    block[_SYNC], block[10] = _address(sync), len(sync)
    block[STATUS], block[FAIL] = 0, -1
    block[len(block) - 4 * n:] = shards.ravel()
    return block


@njit(**_JIT)
def forward_block(kind, gemm, xp, hs, cs, acts, W_hh, b_hn, lengths, x, W_ih, b_ih, b_hh, h_init, c_init,
                  reverse, shards, sync, parties, calls):
    """The block of a team running :func:`rnnkit.kernels.loops.forward` on ``shards`` (n, 4)."""
    block = _head(_FORWARD_ARRAYS, kind, gemm, reverse, shards, sync, parties, calls)
    at = _HEAD
    for arr in (xp, hs, cs, acts):
        at = _put(block, at, arr)
    at = _put(block, at, W_hh)
    at = _put(block, at, b_hn)
    at = _put(block, at, lengths)
    at = _put(block, at, x)
    at = _put(block, at, W_ih)
    for arr in (b_ih, b_hh):
        at = _put(block, at, arr)
    for arr in (h_init, c_init):
        at = _put(block, at, arr)
    return block


@njit(**_JIT)
def backward_block(kind, gemm, dy, dh, dc, hs, cs, xp, acts, W_hh, lengths, reverse, dG, grec, dan, drh, h_prev,
                   x, sums, dh_n, dc_n, slot, shards, sync, parties, calls):
    """The block of a team running :func:`rnnkit.kernels.loops.backward` on ``shards`` (n, 4)."""
    block = _head(_BACKWARD_ARRAYS, kind, gemm, reverse, shards, sync, parties, calls)
    at = _put(block, _HEAD, dy)
    for arr in (dh, dc):
        at = _put(block, at, arr)
    for arr in (hs, cs, xp, acts):
        at = _put(block, at, arr)
    at = _put(block, at, W_hh)
    at = _put(block, at, lengths)
    for arr in (dG, grec):
        at = _put(block, at, arr)
    for arr in (dan, drh):
        at = _put(block, at, arr)
    at = _put(block, at, h_prev)
    at = _put(block, at, x)
    at = _put(block, at, sums)
    for arr in (dh_n, dc_n):
        at = _put(block, at, arr)
    at = _put(block, at, slot)
    return block


def slots(block: np.ndarray) -> np.ndarray:
    """The view of a block that :func:`point` writes: the sync array's address, then each array's."""
    return block[_SYNC:len(block) - 4 * block[5]:4]  # _SYNC, then every 4th: each array's address from _HEAD


def point(slots_view: np.ndarray, addresses: list) -> None:
    """Move a block (through its :func:`slots`) to another call's arrays of the same shapes: the sync
    array's address, then the arrays' in the loop's argument order."""
    slots_view[:] = addresses


@njit(**_JIT, inline="always")
def _forward_shard(block, like, b0, b1, j0, j1):
    a = _HEAD
    loops.forward(block[1], block[2], _array3(block, a, like), _array3(block, a + 4, like),
                  _array3(block, a + 8, like), _array3(block, a + 12, like), _array2(block, a + 16, like),
                  _array1(block, a + 20, like), _array1(block, a + 24, np.int64(0)), _array3(block, a + 28, like),
                  _array2(block, a + 32, like), _array1(block, a + 36, like), _array1(block, a + 40, like),
                  _array2(block, a + 44, like), _array2(block, a + 48, like),
                  block[3] != 0, b0, b1, j0, j1, _sync(block), block[4])


@njit(**_JIT, inline="always")
def _backward_shard(block, like, b0, b1, j0, j1):
    a = _HEAD
    loops.backward(block[1], block[2], _array3(block, a, like), _array2(block, a + 4, like),
                   _array2(block, a + 8, like), _array3(block, a + 12, like), _array3(block, a + 16, like),
                   _array3(block, a + 20, like), _array3(block, a + 24, like), _array2(block, a + 28, like),
                   _array1(block, a + 32, np.int64(0)), block[3] != 0, _array3(block, a + 36, like),
                   _array3(block, a + 40, like), _array2(block, a + 44, like), _array2(block, a + 48, like),
                   _array3(block, a + 52, like), _array3(block, a + 56, like), _array2(block, a + 60, like),
                   _array2(block, a + 64, like), _array2(block, a + 68, like),
                   _array1(block, a + 72, np.int64(0)), b0, b1, j0, j1, _sync(block), block[4])


@njit(**_JIT, inline="always")
def _sync(block):
    return carray(_pointer(block[_SYNC], np.int64(0)), (block[10],))


@njit(nogil=True, error_model="numpy")  # not cached itself: see _source_stamp
def _body(data, like, backward):
    """One team thread: its shards (k, k + n, ...), with a one-thread MKL. An exception in a shard
    (which a team body cannot raise: numba would print it as unraisable and return) is written to
    the block's status, and every wait of the call returns (loops.ABORTED), so that the other
    threads stop at their next step and the caller raises."""
    block = carray(data, (carray(data, (1,), np.int64)[0],), np.int64)
    me, team = _call_int(block[6]), _call_int(block[8])
    old = _call_int_int(block[9], 1)
    n = block[5]
    shards = block[len(block) - 4 * n:].reshape((n, 4))
    for s in range(me, n, team):
        b0, b1, j0, j1 = shards[s, 0], shards[s, 1], np.uint64(shards[s, 2]), np.uint64(shards[s, 3])
        try:
            if block[FAIL] == s:
                raise RuntimeError("injected")
            if backward:
                _backward_shard(block, like, b0, b1, j0, j1)
            else:
                _forward_shard(block, like, b0, b1, j0, j1)
        except Exception:
            block[STATUS] = 1
            if block[4] > 1:  # (row shards never wait)
                loops._atomic_store(block[_SYNC], loops.ABORTED)
            break
    if block[4] > 1 and block[STATUS] == 0 and loops._atomic_load(block[_SYNC]) >= loops.ABORTED:
        block[STATUS] = 2  # a wait past its bound (loops._wait)
    _call_int_int(block[9], old)


_BODY = types.void(types.voidptr)


def _source_stamp() -> int:
    """A hash of this file's and the loops' source. numba keys a cached function on its own file
    only, so a body cached before a change to loops.py would still run the old loops; the stamp is
    part of each body's closure, which numba's cache key includes."""
    digest = hashlib.sha256()
    for path in (loops.__file__, __file__):
        with open(path, "rb") as f:
            digest.update(f.read())
    return int(digest.hexdigest()[:15], 16)


def _team_body(like, backward: bool, stamp: int):
    """The compiled team body of one loop and dtype (``like``: a zero of the dtype)."""

    def body(data):
        if stamp:  # (always true; the closure holds it)
            _body(data, like, backward)

    return cfunc(_BODY, cache=True, error_model="numpy")(body)


_STAMP = _source_stamp()
_forward_float32 = _team_body(np.float32(0), False, _STAMP)
_forward_float64 = _team_body(np.float64(0), False, _STAMP)
_backward_float32 = _team_body(np.float32(0), True, _STAMP)
_backward_float64 = _team_body(np.float64(0), True, _STAMP)


# loop -> (block maker, {dtype: address of the team body})
BODIES = {
    loops.forward: (forward_block, {np.dtype(np.float32): _forward_float32.address,
                                    np.dtype(np.float64): _forward_float64.address}),
    loops.backward: (backward_block, {np.dtype(np.float32): _backward_float32.address,
                                      np.dtype(np.float64): _backward_float64.address}),
}
