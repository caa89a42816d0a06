"""How the threads of one call meet: atomics, bounded waits, and tasks a thread takes over.

A call split by hidden units runs as *tasks*: in each phase (a step, or a part of one that needs
every unit of the last), one task per unit shard. A thread waits until every task of the previous
phase is done (:func:`wait`), runs its own shard's task and then any other shard's task of the phase
that nobody has claimed yet (:func:`task`): a party that lost its core (or never started) holds the
others up for at most the task it is in, instead of at every step. A task's arithmetic does not
depend on the thread that runs it, so the results do not either. The counters live in the call's
block (rnnkit.kernels.layout: ``done``, and each shard's next unclaimed phase, in its state).

Waits are bounded. A thread that fails sets ``done`` to ABORTED (:func:`abort`): every wait of the
call then returns true and its loop returns, so the others stop at their next step instead of
waiting for a task nobody will finish. A wait that has seen no task done for ``wait_limit`` seconds
of its own polling aborts the call the same way (seconds with the process stopped, between two of
its polls, do not count). While it waits a thread first polls with the CPU's pause hint, then yields
its core at each poll.
"""

from __future__ import annotations

import platform

import numpy as np
from llvmlite import ir
from numba import carray, njit, types
from numba.extending import intrinsic

from .expmath import JIT
from .layout import ABORTED, OK, RAISED, SLOTS, STATE_SLOTS, WAITED_TOO_LONG
from .products import _PTR, address, call_address

WAIT_SPINS = 2000  # polls with the pause hint before each further one yields the core
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
_I64 = ir.IntType(64)

_SHARDS, _SHARDS_AT, _STATE_AT = SLOTS["shards"], SLOTS["shards_at"], SLOTS["state_at"]
_DONE, _CLAIMS = STATE_SLOTS["done"], len(STATE_SLOTS)  # (from state_at)
_SCHED_YIELD, _TIME, _LIMIT = SLOTS["sched_yield"], SLOTS["time"], SLOTS["wait_limit"]
_FAIL_SHARD, _FAIL_PHASE = SLOTS["fail_shard"], SLOTS["fail_phase"]


@intrinsic
def atomic_add(typingctx, addr, value):
    """Atomically add ``value`` to the int64 at address ``addr``; returns the old value."""

    def codegen(context, builder, sig, args):
        return builder.atomic_rmw("add", builder.inttoptr(args[0], _PTR), args[1], "seq_cst")

    return types.int64(types.int64, types.int64), codegen


@intrinsic
def atomic_load(typingctx, addr):
    """The int64 at address ``addr``, read with acquire order (sees every write made before the
    other threads' matching release)."""

    def codegen(context, builder, sig, args):
        return builder.load_atomic(builder.inttoptr(args[0], _PTR), "acquire", 8, typ=_I64)

    return types.int64(types.int64), codegen


@intrinsic
def atomic_store(typingctx, addr, value):
    """Set the int64 at address ``addr`` to ``value`` with release order."""

    def codegen(context, builder, sig, args):  # (an exchange: llvmlite's atomic store wants a typed pointer)
        builder.atomic_rmw("xchg", builder.inttoptr(args[0], _PTR), args[1], "release")
        return context.get_dummy_value()

    return types.void(types.int64, types.int64), codegen


@intrinsic
def compare_swap(typingctx, addr, expected, value):
    """Atomically replace the int64 at address ``addr`` by ``value`` if it holds ``expected``;
    returns whether it did."""

    def codegen(context, builder, sig, args):
        pair = builder.cmpxchg(builder.inttoptr(args[0], _PTR), args[1], args[2], "seq_cst", "seq_cst")
        return builder.extract_value(pair, 1)

    return types.boolean(types.int64, types.int64, types.int64), codegen


@intrinsic
def pause(typingctx):
    """The spin-wait hint (x86's ``pause``: the core stops issuing loads of the polled line for a
    moment, and a sibling hyperthread gets it); nothing on other machines."""

    def codegen(context, builder, sig, args):
        if _X86:
            fnty = ir.FunctionType(ir.VoidType(), [])
            found = builder.module.globals.get("llvm.x86.sse2.pause")
            builder.call(found if found is not None else ir.Function(builder.module, fnty, "llvm.x86.sse2.pause"), [])
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def call_int64(typingctx, fn, arg):
    """``long f(long)`` at address ``fn`` (libc's sched_yield, which ignores the argument, and
    time(NULL))."""

    def codegen(context, builder, sig, args):
        return call_address(builder, args[0], ir.FunctionType(_I64, [_I64]), [args[1]])

    return types.int64(types.int64, types.int64), codegen


@intrinsic
def call_int32(typingctx, fn, arg):
    """``int f(int)`` at address ``fn`` (MKL_Set_Num_Threads_Local), widened to int64."""

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        result = call_address(builder, args[0], ir.FunctionType(i32, [i32]), [builder.trunc(args[1], i32)])
        return builder.sext(result, _I64)

    return types.int64(types.int64, types.int64), codegen


@njit(**JIT)
def abort(blk):
    """Make every wait of the call return true (a thread failed, or a wait gave up)."""
    atomic_store(address(blk) + (blk[_STATE_AT] + _DONE) * 8, ABORTED)


@njit(**JIT)
def aborted(blk):
    return atomic_load(address(blk) + (blk[_STATE_AT] + _DONE) * 8) >= ABORTED


@njit(**JIT)
def wait(blk, parties, phase):
    """Wait until every task of the phases before this one is done; true where the call was
    aborted (the caller returns at once)."""
    if parties == 1:
        return False
    counter = address(blk) + (blk[_STATE_AT] + _DONE) * 8
    spins = 0
    seen = np.int64(-1)
    last = np.int64(0)
    waited = np.int64(0)
    while True:
        done = atomic_load(counter)
        if done >= ABORTED:
            return True
        if done >= parties * phase:
            return False
        if spins < WAIT_SPINS:
            spins += 1
            pause()
            continue
        call_int64(blk[_SCHED_YIELD], 0)
        now = call_int64(blk[_TIME], 0)
        if done != seen:  # progress: the bound starts again
            seen, waited = done, np.int64(0)
        elif now - last <= 1:  # (a longer gap: the process was stopped, not this thread waiting)
            waited += now - last
        last = now
        if waited > blk[_LIMIT]:
            abort(blk)
            return True


@njit(**JIT)
def own_shard(blk, parties, j0):
    """The shard whose units start at j0 (0 for one thread alone)."""
    if parties == 1:
        return 0
    n = blk[_SHARDS]
    edges = blk[_SHARDS_AT] + 4 * n
    for k in range(parties):
        if blk[edges + k] == np.int64(j0):
            return k
    return 0


@njit(**JIT)
def task(blk, parties, me, i, phase, j0, j1):
    """The units of the i-th task this thread tries in this phase (its own shard's, then the others'
    in turn) and whether it got it: not when another thread claimed it first. One thread alone has
    its own units."""
    if parties == 1:
        return True, j0, j1
    k = (me + i) % parties
    n = blk[_SHARDS]
    at = blk[_SHARDS_AT]
    if compare_swap(address(blk) + (blk[_STATE_AT] + _CLAIMS + k) * 8, phase, phase + 1):
        return True, np.uint64(blk[at + 4 * n + k]), np.uint64(blk[at + 4 * n + k + 1])
    return False, j0, j1


@njit(**JIT)
def task_done(blk, parties):
    if parties > 1:
        atomic_add(address(blk) + (blk[_STATE_AT] + _DONE) * 8, 1)


# ---- a body's threads and its shards (rnnkit.kernels.loops: forward and backward) ----------------

_SET_THREADS, _PARTIES = SLOTS["set_threads"], SLOTS["parties"]
_NEXT, _STATUS = STATE_SLOTS["next_shard"], STATE_SLOTS["status"]


@njit(**JIT, inline="always")
def block(data):
    """The block at address ``data`` (its first slot is its length)."""
    return carray(data, (carray(data, (1,), np.int64)[0],), np.int64)


@njit(**JIT)
def begin(blk):
    """A thread starts on a block: its BLAS (MKL's, for products too big to pack) on one thread;
    returns what to give back to end."""
    set_threads = blk[_SET_THREADS]
    return call_int32(set_threads, 1) if set_threads != 0 else np.int64(0)


@njit(**JIT)
def next_shard(blk):
    """The next shard nobody has taken (an atomic counter: whichever threads run the body share the
    shards out, a team of any size), or -1 where none is left."""
    s = atomic_add(address(blk) + (blk[_STATE_AT] + _NEXT) * 8, 1)
    return s if s < blk[_SHARDS] else np.int64(-1)


# A checked build (rnnkit.kernels.build) checks every array access and catches an exception in a
# body, and the tests can make a shard raise (the block's fail_shard and fail_phase); an unchecked
# one has nothing that raises.

@njit(**JIT)
def injected(blk, s):
    """Raise where a test asked shard s to fail at its start (fail_phase -1)."""
    if blk[_FAIL_SHARD] == s and blk[_FAIL_PHASE] == -1:
        raise RuntimeError("a shard failed (injected by a test)")


@njit(**JIT)
def injected_task(blk, k, phase):
    """Raise where a test asked shard k's task of this phase to fail (after its claim, so that no
    other thread runs it)."""
    if blk[_FAIL_SHARD] == k and blk[_FAIL_PHASE] == phase:
        raise RuntimeError("a task failed (injected by a test)")


@njit(**JIT)
def failed(blk):
    """A thread raised: the status says so, the call is aborted (every wait returns), and the
    thread's BLAS threads go back to the process's setting."""
    blk[blk[_STATE_AT] + _STATUS] = RAISED
    abort(blk)
    if blk[_SET_THREADS] != 0:
        call_int32(blk[_SET_THREADS], 0)


@njit(**JIT)
def end(blk, old):
    """A thread is done with a block: the status of a call a wait aborted (past its bound), and the
    BLAS threads as they were."""
    at = blk[_STATE_AT] + _STATUS
    if blk[at] == OK and blk[_PARTIES] > 1 and aborted(blk):
        blk[at] = WAITED_TOO_LONG
    if blk[_SET_THREADS] != 0:
        call_int32(blk[_SET_THREADS], old)
