"""The compiled time loops of the fused engine: forward and hand-written BPTT for every cell.

The caller does the input projection of all steps as one GEMM before the loop, with every bias that
adds straight to a pre-activation folded in: ``xp = x W_ih^T + b_ih + b_hh`` (for GRU with the reset
gate after the matrix, b_hn is left out: r scales W_hn h + b_hn). It does every weight gradient as
one GEMM after the backward loop, over the stored states and the pre-activation gradients ``dG``;
but the loop sums the biases' (and W_ih's with one input feature) as it goes, and on batch-row
shards each thread makes its share of W_hh's as one product at the end of its loop.
What is left inside the loop is one matrix product per step (two for GRU with the reset gate before
the matrix) and the gates. The gates add the product ``h W_hh^T`` to the step's slice of xp and are
computed in place there, so xp ends up holding the activations the backward pass reads. numba compiles each loop once per dtype (the cell, direction and rows are runtime
values) and caches it on disk, so the loop pays no Python or dispatcher cost per step.

Products: W_hh is packed once per call, by each thread for the shards it runs, into strips of a few
columns each stored whole (``_pack_rows`` / ``_pack_columns``), and every step's product runs in a
register-blocked loop compiled in (``_small_mm`` over the strips: ``_packed_mm``); only a W_hh over
PACKED_MAX_BYTES calls a Fortran ``?gemm_`` through its address (``gemm``),
found by :mod:`rnnkit.kernels.blas`: the MKL inside torch's own library where it has one, else
scipy's. Only its address crosses into compiled code, so the on-disk cache holds no pointer of
another process.

Storage, batch-major as the model's tensors (no transposes around the loop), for a layer of hidden
size H, G gate blocks and T steps; b is the batch row, t the time (not the loop step):

* ``xp`` (B, T, G*H): pre-activations, overwritten by the activations (LSTM i, f, g, o; GRU r, z, n;
  the Elman cell's are not kept: its derivative comes from h itself).
* ``hs`` (B, T+1, H): hidden states on the boundaries between steps. The forward direction reads
  hs[:, t] and writes hs[:, t+1]; the reverse direction reads hs[:, t+1] and writes hs[:, t]. The
  initial state is hs[:, 0] (forward) or hs[:, T] (reverse), the outputs hs[:, 1:] or hs[:, :-1].
* ``cs`` (B, T+1, H): the LSTM cell states, the same way; (B, 0, H) for the other cells.
* ``acts`` (B, T, A*H): what else the backward pass needs: LSTM tanh(c), GRU W_hn h + b_hn (reset
  after) or r ⊙ h (reset before) (A = 1); nothing for the Elman cell (A = 0). (B, 1, A*H) scratch when
  no gradient is wanted.
* ``dG`` (B, T, G*H): the gradient of the loss with respect to the pre-activation xp.

Each call runs the batch rows [b0, b1) and the hidden units [j0, j1) only (the loops release the
GIL). Rows never mix in a recurrence, so disjoint row ranges run on several threads at once without
meeting. Units do mix (every unit of h_prev enters each unit's gates): threads that split the units
run each step as one task per shard, and no task starts before every task of the step before is done
(see ``_wait`` and ``_claim``: a thread that finds a shard's task unclaimed runs it, so a thread off
its core does not hold the others up for the rest of the sequence).

A sequence b is alive at time t when ``lengths[b] > t``; a dead row keeps its state, stores zero
activations (so the caller's GEMMs over them add exact zeros) and passes its gradient through.
"""

from __future__ import annotations

import platform

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

# The cell codes and the extra storage per time step, in units of H (see the module docstring),
# defined where no numba is imported; constants in the compiled code.
from . import ACTS, GRU, GRU_RESET_BEFORE, LSTM, RNN_RELU, RNN_TANH  # noqa: E402, F401

_JIT = dict(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})


# exp(x) for x <= 0, written out so that LLVM vectorizes the gate loops (numba has no vector exp
# without Intel's SVML; measured 2.5x faster than libm's scalar exp in a loop): x = -m ln2 + r with
# |r| <= ln2/2, exp(r) by its Taylor polynomial (_exp_poly: degree 13 in float64, 7 in float32, each
# truncated below a tenth of its type's epsilon), 2^-m built from its exponent bits. Arguments below
# -60 are clamped: exp(-60) is 9e-27, far below any tolerance, and the clamp keeps 2^-m a normal
# number in float32 (NaN too, which then comes back at the end).
# The activations compute in the argument's own type F (numba types a Python float constant as
# float64, which would turn float32 gate math into float64 and halve the vector width).
_LOG2E = 1.4426950408889634
_LN2_HI = 0.693145751953125  # ln 2 split so that m * _LN2_HI is exact for m < 2^10
_LN2_LO = 1.4286068203094173e-06


@intrinsic
def _pow2_neg(typingctx, m):
    """2^-m for a whole float m in [0, 126], as the bits of a float of m's type. A table lookup instead
    is a gather, and measured the slowest instruction of the vectorized gate loops."""
    width = m.bitwidth
    mantissa, bias = (23, 127) if width == 32 else (52, 1023)

    def codegen(context, builder, sig, args):
        int_t = ir.IntType(width)
        exponent = builder.sub(ir.Constant(int_t, bias), builder.fptosi(args[0], int_t))
        return builder.bitcast(builder.shl(exponent, ir.Constant(int_t, mantissa)), args[0].type)

    return m(m), codegen


def _exp_poly(r):
    """exp(r) for |r| <= ln2/2 by its Taylor polynomial: degree 13 (truncation < 5e-18 relative) in
    float64, degree 7 (< 5.2e-9, a tenth of float32's epsilon) in float32."""


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"}, inline="always")
def _exp_tail(p, r):
    """Horner from p, the polynomial's terms from degree 7 up, down through 1/6! to 1/0!."""
    F = type(r)
    p = p * r + F(1.0 / 720.0)
    p = p * r + F(1.0 / 120.0)
    p = p * r + F(1.0 / 24.0)
    p = p * r + F(1.0 / 6.0)
    p = p * r + F(0.5)
    p = p * r + F(1.0)
    return p * r + F(1.0)


@overload(_exp_poly, inline="always", jit_options=_JIT)
def _exp_poly_typed(r):
    F = r
    if r.bitwidth == 32:
        return lambda r: _exp_tail(F(1.0 / 5040.0), r)

    def float64_poly(r):
        p = F(1.0 / 6227020800.0)  # 1/13!, then Horner down to 1/7!
        p = p * r + F(1.0 / 479001600.0)
        p = p * r + F(1.0 / 39916800.0)
        p = p * r + F(1.0 / 3628800.0)
        p = p * r + F(1.0 / 362880.0)
        p = p * r + F(1.0 / 40320.0)
        return _exp_tail(p * r + F(1.0 / 5040.0), r)
    return float64_poly


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"}, inline="always")
def _exp_neg(x):
    F = type(x)
    xc = x if x > F(-60.0) else F(-60.0)
    m = np.floor(F(0.5) - xc * F(_LOG2E))  # 0 <= m <= 87, in type F (math.floor gives an int)
    r = xc + m * F(_LN2_HI) + m * F(_LN2_LO)
    return _exp_poly(r) * _pow2_neg(m) if x == x else x


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"}, inline="always")
def _sigmoid(a):
    F = type(a)
    e = _exp_neg(-abs(a))
    d = F(1.0) / (F(1.0) + e)
    return d if a >= F(0.0) else e * d


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"}, inline="always")
def _tanh(a):
    F = type(a)
    e = _exp_neg(F(-2.0) * abs(a))
    v = (F(1.0) - e) / (F(1.0) + e)
    return v if a >= F(0.0) else -v




# ---- small products, compiled in ----------------------------------------------------------------

# A step's product (B x H by H x G*H) runs in a register-blocked loop compiled in rather than
# through BLAS: at the small sizes MKL's call, checks and packing cost more than the multiply-adds
# (1.2-1.7x the loop's time), and at the big ones MKL packs W_hh anew at every step. W_hh is packed
# once per call instead (see _pack_rows): measured 1.3-1.6x faster than MKL's sgemm_ from 32x512x256
# to 32x4096x1024, 2.4x at 16x1024x256 (benchmarks/README.md, ninth and tenth passes). Only a W_hh over
# PACKED_MAX_BYTES (not measured past it; float64 tied with MKL at 32 MB) goes to BLAS.
# The loop multiply-adds along the depth in order, from zero, in chunks of PACKED_DEPTH, each added
# to C (C last where the product adds to it, beta = 1). Below a depth of 256 that is one chunk, MKL's
# float32 order on the dev machine: the results are bit for bit MKL's there (tests/test_kernels.py
# holds the loop to numpy either way).
PACKED_MAX_BYTES = 16 * 1024 * 1024
PACKED_DEPTH = 256
# The backward's products read W_hh by rows as it is: where all of it fits DIRECT_BYTES (in L1) and
# one chunk of the depth, they read it in place rather than packed (3% of a small train step).
DIRECT_BYTES = 64 * 1024
_VECS = 2  # a block's width in vectors


def _vector_bytes() -> int:
    """The width of the vectors the products use: 64 bytes where the machine numba compiles for has
    AVX-512 (32 registers), else 32. Fixed when this module is imported; numba's cache is keyed on
    the CPU and its features, so a cache made on one machine is not loaded on another."""
    from llvmlite import binding
    from numba.core import config

    features = config.CPU_FEATURES
    if features is None:
        features = binding.get_host_cpu_features().flatten()
    return 64 if "+avx512f" in features.split(",") else 32


VECTOR_BYTES = _vector_bytes()
# Row blocks, tallest first, each by _VECS vectors: 8 x 2 zmm = 16 accumulators, 2 loads and a
# broadcast (19 of 32 registers) with AVX-512; 4 x 2 ymm = 8 accumulators (11 of 16) without. At
# 16x1024x256 (B32 H256 LSTM on row shards) in the loop, 8 x 2 zmm measured 11% faster than 4 x 2
# ymm (benchmarks/README.md, tenth pass). The rows left over go through shorter blocks.
_ROW_BLOCKS = (8, 4, 1) if VECTOR_BYTES == 64 else (4, 1)


@intrinsic
def _small_mm(typingctx, zero, a, lda, ka, b, ldb, c, ldc, m, n, k, accumulate):
    """Row-major C (m, n) = A (m, k) B (k, n) (+ C when ``accumulate``): addresses and row strides
    in elements, A's element (i, p) at i * lda + p * ka (ka = 1: row-major; lda = 1: A stored
    transposed, as the backward's dW_hh reads dG); ``zero`` only gives the element type. Blocks of
    _ROW_BLOCKS[0] rows by _VECS vectors of VECTOR_BYTES, their accumulators in registers across the
    whole depth; then single vectors, then (AVX-512) single 32-byte vectors, then single columns;
    then the rows left over, by the shorter row blocks. Each element is the same chain of
    multiply-adds in every block, so the blocking does not change a bit."""
    size = 4 if zero == types.float32 else 8
    lanes = VECTOR_BYTES // size
    widths = [(_VECS, lanes), (1, lanes)] + ([(1, 32 // size)] if lanes > 32 // size else []) + [(1, 1)]

    def codegen(context, builder, sig, args):
        F = context.get_value_type(zero)
        i64, i32 = ir.IntType(64), ir.IntType(32)
        _, a, lda, ka, b, ldb, c, ldc, m, n, k, accumulate = args
        A, B, C = (builder.inttoptr(v, F.as_pointer()) for v in (a, b, c))

        def const(v):
            return ir.Constant(i64, v)

        def element(base, row, ld, col, offset, vt):
            ptr = builder.gep(base, [builder.add(builder.add(builder.mul(row, ld), col), const(offset))])
            return ptr if vt is F else builder.bitcast(ptr, vt.as_pointer())

        def block(i0, j0, rows, vecs, width):  # C[i0:i0+rows, j0:j0+vecs*width]
            vt = F if width == 1 else ir.VectorType(F, width)
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vt, [vt] * 3),
                f"llvm.fma.{'v%d' % width if width > 1 else ''}f{size * 8}")
            acc = [[cgutils.alloca_once_value(builder, ir.Constant(vt, None)) for _ in range(vecs)]
                   for _ in range(rows)]
            with cgutils.for_range(builder, k, intp=i64) as loop:
                bv = [builder.load(element(B, loop.index, ldb, j0, v * width, vt), align=size)
                      for v in range(vecs)]
                for r in range(rows):
                    av = builder.load(element(A, builder.add(i0, const(r)), lda, builder.mul(loop.index, ka), 0,
                                              F))
                    if width > 1:  # broadcast
                        av = builder.insert_element(ir.Constant(vt, ir.Undefined), av, ir.Constant(i32, 0))
                        av = builder.shuffle_vector(av, ir.Constant(vt, ir.Undefined),
                                                    ir.Constant(ir.VectorType(i32, width), None))
                    for v in range(vecs):
                        builder.store(builder.call(fma, [av, bv[v], builder.load(acc[r][v])]), acc[r][v])
            for r in range(rows):
                for v in range(vecs):
                    ptr = element(C, builder.add(i0, const(r)), ldc, j0, v * width, vt)
                    value = builder.load(acc[r][v])
                    with builder.if_else(accumulate) as (add, store):
                        with add:
                            builder.store(builder.fadd(builder.load(ptr, align=size), value), ptr, align=size)
                        with store:
                            builder.store(value, ptr, align=size)

        def tiles(start, count, size):  # [start, stop) of count's whole multiples of size from start
            return start, builder.add(start, builder.mul(builder.sdiv(builder.sub(count, start), const(size)),
                                                         const(size)))

        def rows_from(i0, rows):
            stop = const(0)
            for vecs, width in widths:
                start, stop = tiles(stop, n, vecs * width)
                with cgutils.for_range_slice(builder, start, stop, const(vecs * width), intp=i64) as (j0, _):
                    block(i0, j0, rows, vecs, width)

        stop = const(0)
        for rows in _ROW_BLOCKS:
            start, stop = tiles(stop, m, rows)
            with cgutils.for_range_slice(builder, start, stop, const(rows), intp=i64) as (i0, _):
                rows_from(i0, rows)
        return context.get_dummy_value()

    return types.void(zero, *[types.int64] * 10, types.boolean), codegen


@njit(**_JIT, inline="always")
def _packs(W):
    """Whether the products with W (W_hh) run packed, in the loop above, rather than through BLAS."""
    return W.size * W.itemsize <= PACKED_MAX_BYTES


@njit(**_JIT, inline="always")
def _direct(W):
    """Whether the backward's products read W (W_hh) in place, unpacked (see DIRECT_BYTES)."""
    return W.shape[0] < PACKED_DEPTH and W.size * W.itemsize <= DIRECT_BYTES


@njit(**_JIT, inline="always")
def _strip(P):
    """Columns in a strip of a packed matrix P: the loop's block width, _VECS vectors."""
    return _VECS * VECTOR_BYTES // P.itemsize


@njit(**_JIT)
def _pack_rows(W, P, at, row0, nu, blocks):
    """Pack B = W[rows]^T (W.shape[1] x blocks*nu) at element ``at`` of P, B's column (k, u) being W's
    row row0 + k*H + u (gate block k, unit u): strip after strip of ``_strip`` columns (the last
    narrower), each (depth, width) row-major. Unsigned indices (as in the gate loops): with signed
    ones numba checks each for wraparound, and these loops then ran 1.3-7x slower."""
    H = W.shape[1]  # (the depth too)
    sw = _strip(P)
    n = blocks * nu
    flat = W.reshape(W.size)
    starts = np.empty(sw, np.uint64)  # where the strip's columns start in flat
    for s0 in range(0, n, sw):
        w = min(sw, n - s0)
        for c in range(w):
            col = s0 + c
            starts[c] = np.uint64((row0 + (col // nu) * H + col % nu) * H)
        uw = np.uint64(w)
        base = np.uint64(at + s0 * H)
        for i in range(np.uint64(0), np.uint64(H)):
            d = base + i * uw
            for c in range(np.uint64(0), uw):
                P[d + c] = flat[starts[c] + i]


@njit(**_JIT)
def _pack_columns(W, P, at, row0, depth, col0, n):
    """Pack B = W[row0:row0+depth, col0:col0+n] at element ``at`` of P, as :func:`_pack_rows` does."""
    sw = _strip(P)
    for s0 in range(0, n, sw):
        uw = np.uint64(min(sw, n - s0))
        first = np.uint64(col0 + s0)
        base = np.uint64(at + s0 * depth)
        for i in range(depth):
            d = base + np.uint64(i) * uw
            for c in range(np.uint64(0), uw):
                P[d + c] = W[row0 + i, first + c]


@njit(**_JIT)
def _packed_mm(a, lda, P, at, depth, n, c, ldc, m, accumulate):
    """Row-major C (m, n) = A (m, depth) B (+ C when ``accumulate``), B packed at element ``at`` of P
    (by :func:`_pack_rows` or :func:`_pack_columns`); A's and C's addresses and row strides in
    elements. Strip by strip, so that a strip stays in L1 across all the rows, in chunks of
    PACKED_DEPTH of the depth."""
    isz = P.itemsize
    zero = P.dtype.type(0.0)
    sw = _strip(P)
    p = _address(P) + at * isz
    for s0 in range(0, n, sw):
        w = min(sw, n - s0)
        for k0 in range(0, depth, PACKED_DEPTH):
            _small_mm(zero, a + k0 * isz, lda, 1, p + (s0 * depth + k0 * w) * isz, w, c + s0 * isz, ldc, m, w,
                      min(PACKED_DEPTH, depth - k0), accumulate or k0 > 0)


# ---- BLAS by address ---------------------------------------------------------------------------

@intrinsic
def _address(typingctx, arr):
    """The address of an array's first element, as an int64."""

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        return builder.ptrtoint(data, ir.IntType(64))

    return types.int64(arr), codegen


@intrinsic
def _call_fortran(typingctx, fn, args):
    """Call the void function at address ``fn`` with the addresses in the tuple ``args`` as its
    pointer arguments (Fortran passes everything by reference)."""
    n = len(args)

    def codegen(context, builder, sig, llargs):
        ptr = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [ptr] * n)
        callee = builder.inttoptr(llargs[0], fnty.as_pointer())
        builder.call(callee, [builder.inttoptr(builder.extract_value(llargs[1], i), ptr) for i in range(n)])
        return context.get_dummy_value()

    return types.void(fn, args), codegen


@intrinsic
def _atomic_add(typingctx, addr, value):
    """Atomically add ``value`` to the int64 at address ``addr``; returns the old value."""

    def codegen(context, builder, sig, args):
        ptr = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
        return builder.atomic_rmw("add", ptr, args[1], "seq_cst")

    return types.int64(types.int64, types.int64), codegen


@intrinsic
def _atomic_load(typingctx, addr):
    """The int64 at address ``addr``, read with acquire order (sees every write made before the
    other threads' matching ``_atomic_add``)."""

    def codegen(context, builder, sig, args):
        ptr = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
        return builder.load_atomic(ptr, "acquire", 8)

    return types.int64(types.int64), codegen


@intrinsic
def _atomic_store(typingctx, addr, value):
    """Atomically set the int64 at address ``addr`` to ``value`` (release order)."""

    def codegen(context, builder, sig, args):
        ptr = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
        builder.store_atomic(args[1], ptr, "release", 8)
        return context.get_dummy_value()

    return types.void(types.int64, types.int64), codegen


@intrinsic
def _call_void(typingctx, fn):
    """Call the function at address ``fn`` without arguments (``sched_yield``), ignoring its result."""

    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(ir.VoidType(), [])
        builder.call(builder.inttoptr(args[0], fnty.as_pointer()), [])
        return context.get_dummy_value()

    return types.void(types.int64), codegen


@intrinsic
def _compare_swap(typingctx, addr, expected, value):
    """Atomically replace the int64 at address ``addr`` by ``value`` if it holds ``expected``;
    returns whether it did."""

    def codegen(context, builder, sig, args):
        ptr = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
        pair = builder.cmpxchg(ptr, args[1], args[2], "seq_cst", "seq_cst")
        return builder.extract_value(pair, 1)

    return types.boolean(types.int64, types.int64, types.int64), codegen


# A call split by hidden units runs as tasks: in each phase (a step, or a part of one that needs
# every unit of the last), one task per unit shard. ``sync`` (int64) is shared by the parties:
# [tasks done, address of sched_yield, the next unclaimed phase of each shard (parties), the shards'
# unit edges (parties + 1), address of time, the waits' bound in seconds]. A thread waits until every
# task of the previous phase is done, runs its own shard's task and then any other shard's task of the phase that nobody has claimed yet: a party
# that lost its core (or never started) holds the others up for at most the task it is in, instead
# of at every step. A task's arithmetic does not depend on the thread that runs it, so the results
# do not either. One thread alone passes parties = 1 and its own units (sync is not read).

# The waits are bounded: a party that fails sets the tasks-done counter to ABORTED, and every wait
# of the call then returns true, so that the others stop at their next step instead of waiting for
# a task that will never be done (or computing the rest of the sequence from garbage); and a wait
# that has seen no task done for the bound in sync (seconds of its own polling) gives up the same
# way (time spent with the process stopped, between two polls, does not count).
from .blas import ABORTED  # noqa: E402
WAIT_SPINS = 2000  # polls with a pause instruction before each further one yields the core


@intrinsic
def _pause(typingctx):
    """The spin-wait hint (x86's ``pause``: the core does not flood the memory system with loads,
    and a sibling hyperthread gets the core); nothing on other machines."""

    def codegen(context, builder, sig, args):
        if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def _call_int64(typingctx, fn):
    """The int64 result of the function at address ``fn`` called with one null pointer argument
    (libc's ``time(NULL)``: seconds)."""

    def codegen(context, builder, sig, args):
        ptr = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.IntType(64), [ptr])
        return builder.call(builder.inttoptr(args[0], fnty.as_pointer()), [ir.Constant(ptr, None)])

    return types.int64(types.int64), codegen


@njit(**_JIT, inline="always")
def _wait(sync, parties, phase):
    """Wait until every task of the phases before this one is done: polls with a pause, then with
    sched_yield (a party may be off its core). Returns true where the call was aborted (see
    ABORTED): the caller returns at once."""
    if parties == 1:
        return False
    counter = _address(sync)
    clock, limit = sync[sync.shape[0] - 2], sync[sync.shape[0] - 1]  # (see rnnkit.kernels.blas.team_sync)
    spins = 0
    seen = np.int64(-1)
    last = np.int64(0)
    waited = np.int64(0)
    while True:
        done = _atomic_load(counter)
        if done >= ABORTED:
            return True
        if done >= parties * phase:
            return False
        if spins < WAIT_SPINS:
            spins += 1
            _pause()
            continue
        _call_void(sync[1])
        now = _call_int64(clock)
        if done != seen:  # progress: the bound starts again
            seen, waited = done, np.int64(0)
        elif now - last <= 1:  # (a longer gap: the process was stopped, not waiting)
            waited += now - last
        last = now
        if waited > limit:
            _atomic_store(counter, ABORTED)
            return True


@njit(**_JIT, inline="always")
def _claim(sync, shard, phase):
    """Claim shard's task of this phase: true for exactly one of the threads that ask."""
    return _compare_swap(_address(sync) + (2 + shard) * 8, phase, phase + 1)


@njit(**_JIT, inline="always")
def _own_shard(sync, parties, j0):
    """The shard whose units start at j0 (0 for one thread alone, whose sync has no shards)."""
    if parties == 1:
        return 0
    for k in range(parties):
        if sync[2 + parties + k] == np.int64(j0):
            return k
    return 0


@njit(**_JIT, inline="always")
def _task(sync, parties, me, i, phase, j0, j1):
    """The units of the i-th task this thread tries in this phase (its own shard's, then the others'
    in turn) and whether it got it: not when another thread claimed it first. One thread alone has
    its own units."""
    if parties == 1:
        return True, j0, j1
    k = (me + i) % parties
    if _claim(sync, k, phase):
        return True, np.uint64(sync[2 + parties + k]), np.uint64(sync[3 + parties + k])
    return False, j0, j1


@njit(**_JIT, inline="always")
def _task_done(sync, parties):
    if parties > 1:
        _atomic_add(_address(sync), 1)


@njit(**_JIT, inline="always")
def _workspace(dtype):
    """Where a ?gemm_ call's scalars live: m, n, k, lda, ldb, ldc; alpha, beta; 'N', 'T'."""
    chars = np.empty(2, np.uint8)
    chars[0], chars[1] = 78, 84
    return np.empty(6, np.int32), np.empty(2, dtype), chars


@njit(**_JIT, inline="always")
def _gemm(fn, ws, trans_a, m, n, k, a, lda, b, ldb, beta, c, ldc):
    """Column-major C (m x n) = op(A) B + beta C with op(A) = A^T when trans_a, by address."""
    ints, scal, chars = ws
    ints[0], ints[1], ints[2], ints[3], ints[4], ints[5] = m, n, k, lda, ldb, ldc
    scal[0], scal[1] = 1, beta
    pi, ps, pc = _address(ints), _address(scal), _address(chars)
    _call_fortran(fn, (pc + (1 if trans_a else 0), pc, pi, pi + 4, pi + 8, ps, a, pi + 12, b, pi + 16,
                       ps + scal.itemsize, c, pi + 20))


# ---- the loops ---------------------------------------------------------------------------------

@njit(**_JIT)
def forward(kind, gemm, xp, hs, cs, acts, W_hh, b_hn, lengths, x, W_ih, b_ih, b_hh, h_init, c_init, reverse,
            b0, b1, j0, j1, sync, parties):
    """Run the recurrence over all T steps for batch rows [b0, b1) and hidden units [j0, j1),
    filling hs, cs and acts and turning xp into the activations, in place.

    xp (B, T, G*H) input pre-activations with the folded biases, from the caller; but where one
    thread has every unit (parties = 1) and there is one input feature, the loop makes each step's
    for its rows as it comes to it, in cache (where a pass over all steps before the first wrote
    megabytes, read back step by step), ``xp = (b_ih + b_hh) + x W_ih^T`` (an outer product; GRU with
    the reset gate after the product leaves b_hn out), with the caller's operations' roundings (one
    fused multiply-add, as torch's addcmul): the Elman cell stores none; the others store them in xp,
    or in its one step where xp is (B, 1, G*H), the caller's choice where nothing will read the
    activations. With parties = 1 the loop copies its rows' initial
    states h_init, c_init (B, H) into hs and cs too: x (B, T, I), W_ih (G*H, I), b_ih, b_hh (G*H,)
    (zeros for none). Bigger layers' unit shards share those rows, so their caller does both.
    W_hh (G*H, H) contiguous; b_hn (H,)
    (GRU reset after; else unused); lengths (B,) int64; acts (B, T or 1, A*H) (see the module
    docstring). j0, j1 are unsigned (see below). ``parties`` threads that share the rows and split the
    units run this together as tasks (see ``sync`` above); one thread alone passes parties = 1.
    """
    B, TX, GH = xp.shape
    T, H = hs.shape[1] - 1, hs.shape[2]
    nb = b1 - b0
    isz = xp.itemsize
    ws = _workspace(xp.dtype)
    blocks = 2 if kind == GRU_RESET_BEFORE else GH // H  # gate blocks of the first product
    phases = 2 if kind == GRU_RESET_BEFORE else 1
    units = H if parties == 1 else np.int64(np.max(np.diff(sync[2 + parties:3 + 2 * parties])))  # the largest shard
    scratch = np.empty(nb * blocks * units, xp.dtype)  # the first product, h W^T, of a task's units
    me = _own_shard(sync, parties, j0)
    shared = np.empty(H, xp.dtype)  # a row's term shared by two loops (see below)
    # Gate-block views: gate k's element j is [.., k, j] with j from range(j0, j1) of unsigned
    # bounds, which LLVM knows is >= 0. Written [.., k * H + j] or with a signed j it may be negative
    # as far as LLVM knows, and numba's wraparound of negative indices then turns every vector load
    # into a gather (measured 2x slower loops). No arithmetic mixes j with signed integers (numba
    # would make it a float).
    xg = xp.reshape(B, TX, GH // H, H)  # (B, T or 1, G, H)
    TA = acts.shape[1]
    ag = acts.reshape(B, TA, acts.shape[2] // H, H)  # (B, TA, A, H)
    x0, h0 = _address(xp), _address(hs)
    # This thread's packed W_hh^T (see _pack_rows): each shard's region packed before the thread's
    # first task of that shard (its own, or one it takes over), so a thread packs only what it runs.
    # Passed on as the array, not its address: numba frees an array after its last use as a
    # variable, and memory reached only through an address taken earlier was then free for the next
    # allocation to overwrite.
    packs = _packs(W_hh)
    packed = np.empty(GH * H if packs else 0, xp.dtype)
    ready = np.zeros(parties, np.bool_)
    # With one input feature and every unit here, the input projection is ``proj[0] + x proj[1]``:
    # the combined bias (GRU with the reset gate after the product leaves b_hn out) and W_ih's
    # column, (G, H) each, made in each step (_forward_first).
    one = parties == 1 and x.shape[2] == 1
    proj = np.empty((2, GH // H, H if one else 0), xp.dtype)
    if one:
        flat = proj.reshape(2, GH)
        for c in range(GH):
            flat[0, c] = b_ih[c] if kind == GRU and c >= 2 * H else b_ih[c] + b_hh[c]
            flat[1, c] = W_ih[c, 0]
    if parties == 1:
        _forward_start(kind, hs, cs, h_init, c_init, reverse, b0, b1)
    for e in range(T * phases):
        step, phase = e // phases, e % phases
        t = T - 1 - step if reverse else step
        p, q = (t + 1, t) if reverse else (t, t + 1)
        ta = t if TA == T else 0
        tx = t if TX == T else 0  # xp's step: t, or its one step where it has one
        xrow = x0 + (b0 * TX + tx) * GH * isz  # xp[b0, tx]
        hrow = h0 + (b0 * (T + 1) + p) * H * isz  # hs[b0, p]
        if _wait(sync, parties, e):  # every unit of the last phase written (or a party failed)
            return
        for i in range(parties):
            mine, u0, u1 = _task(sync, parties, me, i, e, j0, j1)
            if not mine:
                continue
            k = (me + i) % parties  # the task's shard
            if packs and not ready[k]:
                _pack_forward(kind, W_hh, packed, u0, u1)
                ready[k] = True
            if phase == 0:
                _forward_first(kind, gemm, ws, xg, hs, cs, ag, lengths, b_hn, shared, scratch, W_hh, packed,
                               blocks, b0, b1, u0, u1, t, p, q, ta, tx, hrow, x, proj)
            else:
                _forward_reset_before(gemm, ws, xg, hs, acts, lengths, shared, W_hh, packed, b0, b1, u0, u1, t,
                                      p, q, ta, tx, xrow)
            _task_done(sync, parties)


@njit(**_JIT)
def _pack_forward(kind, W, P, u0, u1):
    """Pack the products of units [u0, u1) (see :func:`forward`) into their region of P, which starts at
    element u0 * G*H: W^T's columns of the step's first product, (gate, unit) for all but GRU's n
    with the reset gate before the product, then, for that one, the n block's."""
    GH, H = W.shape
    U0 = np.int64(u0)
    nu = np.int64(u1) - U0
    at = U0 * GH
    _pack_rows(W, P, at, U0, nu, 2 if kind == GRU_RESET_BEFORE else GH // H)
    if kind == GRU_RESET_BEFORE:
        _pack_rows(W, P, at + 2 * nu * H, 2 * H + U0, nu, 1)


@njit(**_JIT, inline="always")
def _times_wt(gemm, ws, W, packed, at, row0, blocks, nu, x, ldx, c, ldc, m, accumulate):
    """The forward's products: row-major C (m, blocks*nu) = X (m, H) B (+ C when ``accumulate``), B's
    column (k, u) being W's row row0 + k*H + u (gate block k, unit u); X's and C's addresses and row
    strides. From B packed at element ``at`` of ``packed`` (:func:`_pack_forward`); where that is
    empty, through BLAS, one call per gate block (row-major C = X W_k^T is column-major C^T = W_k X^T,
    W_k the block's rows)."""
    H = W.shape[1]
    isz = W.itemsize
    if packed.size != 0:
        _packed_mm(x, ldx, packed, at, H, blocks * nu, c, ldc, m, accumulate)
    else:
        for k in range(blocks):
            _gemm(gemm, ws, True, nu, m, H, _address(W) + (row0 + k * H) * H * isz, H, x, ldx,
                  1 if accumulate else 0, c + k * nu * isz, ldc)


@njit(**_JIT)
def _forward_start(kind, hs, cs, h_init, c_init, reverse, b0, b1):
    """Rows [b0, b1)' initial states (see :func:`forward`)."""
    T, H = hs.shape[1] - 1, hs.shape[2]
    first = T if reverse else 0
    for b in range(b0, b1):
        for j in range(H):
            hs[b, first, j] = h_init[b, j]
        if kind == LSTM:
            for j in range(H):
                cs[b, first, j] = c_init[b, j]


@njit(**_JIT, inline="always")
def _projected(proj, v, k, j):
    """Gate k, unit j's input pre-activation for input v, from ``proj`` (see :func:`forward`): the
    rounding of torch's addcmul, bias + v * column in one fused multiply-add."""
    return proj[0, k, j] + v * proj[1, k, j]


@njit(**_JIT, inline="always")
def _forward_first(kind, gemm, ws, xg, hs, cs, ag, lengths, b_hn, shared, scratch, W_hh, packed, blocks, b0,
                   b1, j0, j1, t, p, q, ta, tx, hrow, x, proj):
    """Units [j0, j1) of step t (for GRU with the reset gate before the product, its r, z and r ⊙ h):
    the step's first product and the gates. ``packed``: as in :func:`forward` (see
    :func:`_times_wt`); ``tx``: xp's step (t, or 0 where xp holds one step); ``proj`` (2, G, H): the
    bias and W_ih column where the cell projects x here (:func:`forward`), else empty."""
    T, H = hs.shape[1] - 1, hs.shape[2]
    nb = b1 - b0
    J0 = np.int64(j0)
    nu = np.int64(j1) - J0
    one, zero = hs.dtype.type(1.0), hs.dtype.type(0.0)  # typed constants, see _exp_neg
    project = proj.shape[2] != 0 and kind != RNN_TANH and kind != RNN_RELU
    rec = scratch[: nb * blocks * nu].reshape((nb, blocks, nu))
    _times_wt(gemm, ws, W_hh, packed, J0 * xg.shape[2] * H, J0, blocks, nu, hrow, (T + 1) * H, _address(rec),
              blocks * nu, nb, False)
    for b in range(b0, b1):
        if lengths[b] <= t:
            for j in range(j0, j1):
                hs[b, q, j] = hs[b, p, j]
            if kind == LSTM:
                for j in range(j0, j1):
                    cs[b, q, j] = cs[b, p, j]
            xg[b, tx, :, j0:j1] = 0.0
            ag[b, ta, :, j0:j1] = 0.0
            continue
        r = b - b0
        if project:  # this row's input projection, this step's (see forward)
            v = x[b, t, 0]
            for k in range(xg.shape[2]):
                for j in range(j0, j1):
                    xg[b, tx, k, j] = _projected(proj, v, k, j)
        # One activation per loop, the cell's branch outside them: each loop vectorizes. Plain
        # indexing, no per-row views: making them costs more than a row's work at small H. No
        # loop stores into one row of an array and reads another row of it (h from hs into hs,
        # c from cs into cs, GRU's n from r in xp): LLVM cannot tell the rows apart and keeps
        # such a loop scalar (measured 2-3x slower), so those go through ``shared``.
        # The pre-activation of gate k, unit j is xg[b, tx, k, j] + rec[r, k, j - j0].
        if kind == RNN_TANH and proj.shape[2] != 0:
            v = x[b, t, 0]
            for j in range(j0, j1):
                hs[b, q, j] = _tanh(_projected(proj, v, 0, j) + rec[r, 0, j - j0])
        elif kind == RNN_RELU and proj.shape[2] != 0:
            v = x[b, t, 0]
            for j in range(j0, j1):
                hs[b, q, j] = max(_projected(proj, v, 0, j) + rec[r, 0, j - j0], zero)
        elif kind == RNN_TANH:
            for j in range(j0, j1):
                hs[b, q, j] = _tanh(xg[b, tx, 0, j] + rec[r, 0, j - j0])
        elif kind == RNN_RELU:
            for j in range(j0, j1):
                hs[b, q, j] = max(xg[b, tx, 0, j] + rec[r, 0, j - j0], zero)
        elif kind == LSTM:
            for k in range(2):  # i, f
                for j in range(j0, j1):
                    xg[b, tx, k, j] = _sigmoid(xg[b, tx, k, j] + rec[r, k, j - j0])
            for j in range(j0, j1):  # g
                xg[b, tx, 2, j] = _tanh(xg[b, tx, 2, j] + rec[r, 2, j - j0])
            for j in range(j0, j1):  # o
                xg[b, tx, 3, j] = _sigmoid(xg[b, tx, 3, j] + rec[r, 3, j - j0])
            for j in range(j0, j1):
                shared[j] = xg[b, tx, 1, j] * cs[b, p, j] + xg[b, tx, 0, j] * xg[b, tx, 2, j]
            for j in range(j0, j1):
                cs[b, q, j] = shared[j]
                ag[b, ta, 0, j] = _tanh(shared[j])
            for j in range(j0, j1):
                hs[b, q, j] = xg[b, tx, 3, j] * ag[b, ta, 0, j]
        elif kind == GRU:
            for k in range(2):  # r, z
                for j in range(j0, j1):
                    xg[b, tx, k, j] = _sigmoid(xg[b, tx, k, j] + rec[r, k, j - j0])
            for j in range(j0, j1):
                ag[b, ta, 0, j] = rec[r, 2, j - j0] + b_hn[j]
            for j in range(j0, j1):
                shared[j] = xg[b, tx, 0, j] * ag[b, ta, 0, j]  # r ⊙ (W_hn h + b_hn)
            for j in range(j0, j1):
                xg[b, tx, 2, j] = _tanh(xg[b, tx, 2, j] + shared[j])
            for j in range(j0, j1):
                shared[j] = (one - xg[b, tx, 1, j]) * xg[b, tx, 2, j] + xg[b, tx, 1, j] * hs[b, p, j]
            for j in range(j0, j1):
                hs[b, q, j] = shared[j]
        else:
            for k in range(2):  # r, z
                for j in range(j0, j1):
                    xg[b, tx, k, j] = _sigmoid(xg[b, tx, k, j] + rec[r, k, j - j0])
            for j in range(j0, j1):
                ag[b, ta, 0, j] = xg[b, tx, 0, j] * hs[b, p, j]  # r ⊙ h


@njit(**_JIT)
def _forward_reset_before(gemm, ws, xg, hs, acts, lengths, shared, W_hh, packed, b0, b1, j0, j1, t, p, q, ta,
                          tx, xrow):
    """Units [j0, j1) of step t's second part, for GRU with the reset gate before the product:
    xp[:, t]'s n block += (r ⊙ h) W_hn^T, then n and h. ``packed`` as in :func:`_forward_first`."""
    T, H = hs.shape[1] - 1, hs.shape[2]
    nb = b1 - b0
    J0 = np.int64(j0)
    nu = np.int64(j1) - J0
    isz = hs.itemsize
    TA = acts.shape[1]
    GH = xg.shape[2] * H
    one = hs.dtype.type(1.0)
    _times_wt(gemm, ws, W_hh, packed, J0 * GH + 2 * nu * H, 2 * H + J0, 1, nu,
              _address(acts) + (b0 * TA + ta) * H * isz, TA * H, xrow + (2 * H + J0) * isz, xg.shape[1] * GH, nb, True)
    for b in range(b0, b1):
        if lengths[b] > t:
            for j in range(j0, j1):
                xg[b, tx, 2, j] = _tanh(xg[b, tx, 2, j])
            for j in range(j0, j1):
                shared[j] = (one - xg[b, tx, 1, j]) * xg[b, tx, 2, j] + xg[b, tx, 1, j] * hs[b, p, j]
            for j in range(j0, j1):
                hs[b, q, j] = shared[j]


@njit(**_JIT)
def backward(kind, gemm, dy, dh, dc, hs, cs, xp, acts, W_hh, lengths, reverse, dG, grec, dan, drh, h_prev,
             x, sums, dh_n, dc_n, slot, b0, b1, j0, j1, sync, parties):
    """BPTT for batch rows [b0, b1) and hidden units [j0, j1) (as in :func:`forward`): fill dG
    (B, T, G*H) and turn dh, dc (B, H) from the final-state gradients into the initial-state
    gradients, in place. dy (B, T, H) is the gradient of the outputs; xp holds the forward pass's
    activations. Where one thread has every unit (parties = 1) the loop first copies its rows of the
    final-state gradients dh_n, dc_n (B, H) into dh, dc; unit shards share the rows, so their caller
    does.

    More arrays from the caller, shared by the threads: grec (B, T, G*H) for GRU with the reset
    gate after the product (else (B, T, 0)): the gradient of the recurrent product h W^T + b_hh,
    which differs from dG in the n block (times r), and which the caller's dW_hh and db_hh GEMMs read
    too. (For the other cells it is dG itself: with the reset gate before the product, dG's r and z
    blocks.) dan, drh (B, H) for GRU reset before (else (B, 0)): the gradients of n's
    pre-activation and of r ⊙ h. h_prev (B, T, H): each step's previous state, copied from hs (the
    states every step's W_hh row multiplied, contiguous for the caller's dW_hh GEMM; a copy in the
    loop's threads costs nothing beside the gates, one in torch after the loop ~20 µs at B32 T50 H32);
    (0, 0, 0) where the loop's own dW_hh share (see sums) reads the states in hs instead.
    x (B, T, I): the layer's input. sums (S, 3*G*H [+ G*H*H]): each of the S shards' sums over its
    rows and steps, in its row sums[slot[b0]] (slot (B,) int64; unit shards share row 0), over its
    units (see :func:`_add_sums`): of dG (the input bias's gradient), of dG times x where I = 1
    (W_ih's gradient, a weighted sum then), and b_hh's gradient (the first block's sums again, but
    for GRU's n block with the reset gate after the product: grec's); a pass over dG each that the
    caller saves, and the three blocks laid out as the gradients they are. Where the row is longer (the caller's
    choice, for row shards: parties = 1), the rest is the shard's dW_hh = grec^T h_prev, one product
    after its loop (:func:`_shard_weights_grad`). The caller adds up the S rows.
    """
    B, T, GH = dG.shape
    H = hs.shape[2]
    nb = b1 - b0
    isz = dG.itemsize
    ws = _workspace(dG.dtype)
    rows = 2 * H if kind == GRU_RESET_BEFORE else GH  # gate rows of the recurrent product
    phases = 2 if kind == GRU_RESET_BEFORE else 1
    shared = np.empty(H, dG.dtype)  # LSTM: the gradient of this step's c; GRU: of n's pre-activation
    me = _own_shard(sync, parties, j0)
    s = slot[b0]
    sg = sums[s, : 3 * GH].reshape(3, GH // H, H)  # this shard's sums (see _add_sums)
    in_loop = sums.shape[1] > 3 * GH  # this shard makes its dW_hh share
    copy_prev = h_prev.shape[0] != 0  # (else the share reads the states in hs)
    dGg = dG.reshape(B, T, GH // H, H)  # (B, T, G, H)
    xg = xp.reshape(B, T, GH // H, H)
    ag = acts.reshape(B, T, acts.shape[2] // H, H)  # (B, T, A, H)
    grecg = grec.reshape(B, T, grec.shape[2] // H, H)  # (B, T, G, H)
    # This thread's packed W_hh, each shard's region packed before its first task here (as forward's)
    packs = _packs(W_hh) and not _direct(W_hh)
    packed = np.empty(GH * H if packs else 0, dG.dtype)
    ready = np.zeros(parties, np.bool_)
    g0 = _address(grec) if kind == GRU else _address(dG)  # the gradient of h W^T, (B, T, G*H)
    for b in range(b0, b1 if parties == 1 else b0):  # this thread's rows (unit shards: the caller)
        for j in range(H):
            dh[b, j] = dh_n[b, j]
        if kind == LSTM:
            for j in range(H):
                dc[b, j] = dc_n[b, j]
    # A phase's tasks: the last step's product into dh (its gradient needs every unit of the last
    # step's), then this step's gates; with the reset gate before the product a second phase (see
    # _backward_reset_before). One more phase after the last step for its product.
    for e in range(T * phases + 1):
        step, phase = e // phases, e % phases
        t = step if reverse else T - 1 - step  # this step's time (step T: none)
        last = t - 1 if reverse else t + 1  # the last step's time
        p, q = (t + 1, t) if reverse else (t, t + 1)
        if _wait(sync, parties, e):  # every unit of the last phase written (or a party failed)
            return
        for i in range(parties):
            mine, u0, u1 = _task(sync, parties, me, i, e, j0, j1)
            if not mine:
                continue
            U0 = np.int64(u0)
            nu = np.int64(u1) - U0
            k = (me + i) % parties  # the task's shard
            if packs and not ready[k]:
                _pack_backward(kind, W_hh, packed, u0, u1)
                ready[k] = True
            if phase == 1:
                _backward_reset_before(gemm, ws, dh, hs, xg, dGg, dan, drh, lengths, W_hh, packed, b0, b1, u0, u1,
                                       t, p)
                _add_sums(kind, dGg, grecg, x, sg, lengths, b0, b1, u0, u1, t, 0, 1, step == T - 1)  # r's
            else:
                if step > 0:  # dh[:, units] += (gradient of h W^T) W[:, units]: dead rows' get exact zeros
                    _times_w(gemm, ws, W_hh, packed, U0 * GH, 0, g0 + (b0 * T + last) * GH * isz, T * GH, rows,
                             U0, nu, _address(dh) + (b0 * H + U0) * isz, nb, True)
                if step == 0:  # this shard's sums (unit shards share the row: their units only)
                    for k in range(3):
                        for g in range(GH // H):
                            sg[k, g, u0:u1] = 0.0
                if step < T:
                    _backward_gates(kind, dy, dh, dc, hs, cs, xg, ag, dGg, grecg, dan, h_prev, lengths, shared,
                                    b0, b1, u0, u1, t, p, q, copy_prev)
                    _add_sums(kind, dGg, grecg, x, sg, lengths, b0, b1, u0, u1, t,
                              1 if kind == GRU_RESET_BEFORE else 0, GH // H, step == T - 1)
            _task_done(sync, parties)
    if in_loop:
        _shard_weights_grad(g0, hs, h_prev, reverse, _address(sums) + (s * sums.shape[1] + 3 * GH) * isz, GH, b0,
                            b1)


@njit(**_JIT)
def _shard_weights_grad(g, hs, h_prev, reverse, c, GH, b0, b1):
    """Rows [b0, b1)' share of dW_hh = grec^T h_prev (G*H, H) at address c (grec: the gradient of
    the recurrent product, (B, T, G*H) at address g, read in place as the transposed A of
    :func:`_small_mm`): one product after the loop, while the last steps' dG are still in cache,
    in chunks of PACKED_DEPTH of the depth as :func:`_packed_mm`'s, each added to the last. Over
    the rows' steps of h_prev where the caller gave one (the loop copied the states into it);
    else row by row, over each row's states in hs in place (hs[b, :T], or hs[b, 1:] in reverse):
    no copy, but C is read and written once per row, which only a small C affords. It replaced a
    torch.mm call after the loop (benchmarks/README.md, eleventh pass)."""
    B, T1, H = hs.shape
    T = T1 - 1
    isz = hs.itemsize
    if h_prev.shape[0] != 0:
        _weights_product(hs, g + b0 * T * GH * isz, _address(h_prev) + b0 * T * H * isz, (b1 - b0) * T, c, GH,
                         False)
        return
    for b in range(b0, b1):
        _weights_product(hs, g + b * T * GH * isz, _address(hs) + (b * T1 + (1 if reverse else 0)) * H * isz, T,
                         c, GH, b > b0)


@njit(**_JIT, inline="always")
def _weights_product(like, a, h, depth, c, GH, accumulate):
    """C (G*H, H) at c = A^T S (+ C when ``accumulate``): A (depth, G*H) at a and S (depth, H) at
    h, row-major, of like's dtype and H, in chunks of PACKED_DEPTH of the depth, each added to the
    last."""
    H = like.shape[2]
    isz = like.itemsize
    for k0 in range(0, depth, PACKED_DEPTH):
        _small_mm(like.dtype.type(0.0), a + k0 * GH * isz, 1, GH, h + k0 * H * isz, H, c, H, GH, H,
                  min(PACKED_DEPTH, depth - k0), accumulate or k0 > 0)


@njit(**_JIT, inline="always")
def _add_sums(kind, dGg, grecg, x, sg, lengths, b0, b1, j0, j1, t, k0, k1, final):
    """Add step t's rows [b0, b1) of gate blocks [k0, k1), units [j0, j1), to the shard's sums sg
    (3, G, H) (see :func:`backward`), as the loop goes: each step's dG is still in cache then, where a
    sum after the loop reads all of it again (at B32 T50 H256 LSTM the two took ~0.5 ms). At the
    ``final`` step, b_hh's sums (sg[2]) from the input bias's, but for GRU's b_hn, summed apart: the
    caller's gradients are then views, no copy or concatenation after the loop."""
    one_input = x.shape[2] == 1
    for b in range(b0, b1):
        if lengths[b] <= t:  # (zeros)
            continue
        v = x[b, t, 0] if one_input else x.dtype.type(0.0)
        for k in range(k0, k1):
            for j in range(j0, j1):
                sg[0, k, j] += dGg[b, t, k, j]
            if one_input:
                for j in range(j0, j1):
                    sg[1, k, j] += dGg[b, t, k, j] * v
        if kind == GRU and k0 == 0:
            for j in range(j0, j1):
                sg[2, 2, j] += grecg[b, t, 2, j]
    if final:
        for k in range(k0, min(k1, 2) if kind == GRU else k1):
            for j in range(j0, j1):
                sg[2, k, j] = sg[0, k, j]


@njit(**_JIT)
def _pack_backward(kind, W, P, u0, u1):
    """Pack the backward's products of units [u0, u1) (see :func:`backward`) into their region of P,
    which starts at element u0 * G*H: W's columns of those units over the gate rows of the first
    product (all but GRU's n with the reset gate before the product), then W_hn's."""
    GH, H = W.shape
    U0 = np.int64(u0)
    nu = np.int64(u1) - U0
    rows = 2 * H if kind == GRU_RESET_BEFORE else GH
    _pack_columns(W, P, U0 * GH, 0, rows, U0, nu)
    if kind == GRU_RESET_BEFORE:
        _pack_columns(W, P, U0 * GH + rows * nu, 2 * H, H, U0, nu)


@njit(**_JIT, inline="always")
def _times_w(gemm, ws, W, packed, at, row0, a, lda, depth, U0, nu, c, m, accumulate):
    """The backward's products: row-major C (m, nu) = A (m, depth) W[row0:row0+depth, U0:U0+nu]
    (+ C when ``accumulate``), A's and C's addresses, C's row stride H. From W's packed columns at
    element ``at`` of ``packed`` (see :func:`backward`); where that is empty, W in place (small:
    see ``_direct``) or through BLAS (row-major C = A W' is column-major C^T = W'^T A^T)."""
    H = W.shape[1]
    w = _address(W) + (row0 * H + U0) * W.itemsize
    if packed.size != 0:
        _packed_mm(a, lda, packed, at, depth, nu, c, H, m, accumulate)
    elif _direct(W):
        _small_mm(W.dtype.type(0.0), a, lda, 1, w, H, c, H, m, nu, depth, accumulate)
    else:
        _gemm(gemm, ws, False, nu, m, depth, w, H, a, lda, 1 if accumulate else 0, c, H)


@njit(**_JIT, inline="always")
def _backward_gates(kind, dy, dh, dc, hs, cs, xg, ag, dGg, grecg, dan, h_prev, lengths, shared, b0, b1, j0, j1,
                    t, p, q, copy_prev):
    """Units [j0, j1) of step t: the pre-activation gradients from dh (the loss's and the later
    steps'), and dh, dc through to the step before (but for the product with W_hh); h_prev[:, t]
    where ``copy_prev`` (for the caller's dW_hh GEMM)."""
    one, zero = dh.dtype.type(1.0), dh.dtype.type(0.0)  # typed constants, see _exp_neg
    for b in range(b0, b1):
        if copy_prev:
            for j in range(j0, j1):
                h_prev[b, t, j] = hs[b, p, j]
        if lengths[b] <= t:
            dGg[b, t, :, j0:j1] = 0.0
            grecg[b, t, :, j0:j1] = 0.0
            dan[b, j0:j1] = 0.0
            continue
        # h's gradient is dh + dy; Elman and LSTM leave h_prev's to the next phase's product.
        if kind == RNN_TANH:
            for j in range(j0, j1):
                dGg[b, t, 0, j] = (dh[b, j] + dy[b, t, j]) * (one - hs[b, q, j] * hs[b, q, j])
                dh[b, j] = zero
            continue
        if kind == RNN_RELU:
            for j in range(j0, j1):
                dGg[b, t, 0, j] = dh[b, j] + dy[b, t, j] if hs[b, q, j] > zero else zero
                dh[b, j] = zero
            continue
        for j in range(j0, j1):
            dh[b, j] += dy[b, t, j]
        if kind == LSTM:  # xp: i, f, g, o; acts: tanh(c)
            for j in range(j0, j1):
                tc = ag[b, t, 0, j]
                shared[j] = dc[b, j] + dh[b, j] * xg[b, t, 3, j] * (one - tc * tc)
            for j in range(j0, j1):
                i = xg[b, t, 0, j]
                dGg[b, t, 0, j] = shared[j] * xg[b, t, 2, j] * i * (one - i)
            for j in range(j0, j1):
                f = xg[b, t, 1, j]
                dGg[b, t, 1, j] = shared[j] * cs[b, p, j] * f * (one - f)
            for j in range(j0, j1):
                g = xg[b, t, 2, j]
                dGg[b, t, 2, j] = shared[j] * xg[b, t, 0, j] * (one - g * g)
            for j in range(j0, j1):
                o = xg[b, t, 3, j]
                dGg[b, t, 3, j] = dh[b, j] * ag[b, t, 0, j] * o * (one - o)
            for j in range(j0, j1):
                dc[b, j] = shared[j] * xg[b, t, 1, j]
                dh[b, j] = zero
        else:  # xp: r, z, n; acts: W_hn h + b_hn (reset after) or r ⊙ h (reset before)
            for j in range(j0, j1):
                n = xg[b, t, 2, j]
                shared[j] = dh[b, j] * (one - xg[b, t, 1, j]) * (one - n * n)
            for j in range(j0, j1):
                z = xg[b, t, 1, j]
                gz = dh[b, j] * (hs[b, p, j] - xg[b, t, 2, j]) * z * (one - z)
                dGg[b, t, 1, j] = gz
            for j in range(j0, j1):
                dGg[b, t, 2, j] = shared[j]
            if kind == GRU:
                for j in range(j0, j1):
                    rr = xg[b, t, 0, j]
                    gr = shared[j] * ag[b, t, 0, j] * rr * (one - rr)
                    dGg[b, t, 0, j] = gr
                    grecg[b, t, 0, j] = gr
                for j in range(j0, j1):
                    grecg[b, t, 1, j] = dGg[b, t, 1, j]
                    grecg[b, t, 2, j] = shared[j] * xg[b, t, 0, j]
            else:
                for j in range(j0, j1):
                    dan[b, j] = shared[j]
            for j in range(j0, j1):
                dh[b, j] *= xg[b, t, 1, j]  # through h = (1 - z) n + z h_prev


@njit(**_JIT)
def _backward_reset_before(gemm, ws, dh, hs, xg, dGg, dan, drh, lengths, W_hh, packed, b0, b1, j0, j1, t, p):
    """Units [j0, j1) of step t's second part, for GRU with the reset gate before the product:
    drh = dan W_hn, then r's gradient and h's through r ⊙ h. ``packed``: as in :func:`backward`
    (see :func:`_times_w`)."""
    H = hs.shape[2]
    nb = b1 - b0
    J0 = np.int64(j0)
    nu = np.int64(j1) - J0
    isz = dh.itemsize
    one = dh.dtype.type(1.0)
    _times_w(gemm, ws, W_hh, packed, J0 * 3 * H + 2 * H * nu, 2 * H, _address(dan) + b0 * H * isz, H, H, J0, nu,
             _address(drh) + (b0 * H + J0) * isz, nb, False)
    for b in range(b0, b1):
        if lengths[b] > t:
            for j in range(j0, j1):
                rr = xg[b, t, 0, j]
                gr = drh[b, j] * hs[b, p, j] * rr * (one - rr)
                dGg[b, t, 0, j] = gr
                dh[b, j] += drh[b, j] * rr
