"""The matrix products of the compiled loops: a register-blocked micro-kernel, packing, and a BLAS
``?gemm_`` called through its address.

A step's product (B x H by H x G*H) runs in a register-blocked loop compiled in (:func:`small_mm`)
rather than through BLAS: at the small sizes MKL's call, checks and packing cost more than the
multiply-adds, and at the big ones MKL packs W_hh anew at every step. W_hh is packed once per call
instead, by each thread for the shards it runs, into strips of a few columns each stored whole
(``pack_rows``, ``pack_columns``; ``packed_mm`` runs the micro-kernel over them: :func:`entries`). Only a
W_hh over layout.PACKED_MAX_BYTES goes to BLAS (:func:`gemm`, through the address that
:mod:`rnnkit.kernels.blas` finds), and a small one that fits layout.DIRECT_BYTES is read in place by
the backward. benchmarks/README.md has the measurements behind each number.

The micro-kernel multiply-adds along the depth in order, from zero, in chunks of PACKED_DEPTH, each
added to C: below a depth of 256 that is one chunk, MKL's float32 order on the dev machine, and the
results are bit for bit MKL's there. It is written in LLVM IR with opaque pointers, and its
multiply-adds are ``llvm.fmuladd`` (fused where the machine has FMA, a multiply and an add where it
has not, instead of a libm call per lane).
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
from llvmlite import ir
from numba import carray, njit, types
from numba.extending import intrinsic

from .build import vector_bytes
from .expmath import JIT
from .layout import PACKED_DEPTH

VECS = 2  # a block's width in vectors


VECTOR_BYTES = vector_bytes()
# Row blocks, tallest first, each by VECS vectors: 8 x 2 zmm = 16 accumulators, 2 loads and a
# broadcast (19 of 32 registers) with AVX-512; 4 x 2 ymm = 8 accumulators (11 of 16) without. The
# rows left over go through the shorter blocks.
ROW_BLOCKS = (8, 4, 1) if VECTOR_BYTES == 64 else (4, 1)

_I64 = ir.IntType(64)
_PTR = ir.PointerType()


@contextmanager
def _counted(builder, start, stop, step):
    """``for i in range(start, stop, step)`` (step > 0) in IR; yields i (i64)."""
    before = builder.block
    cond = builder.append_basic_block("loop.cond")
    body = builder.append_basic_block("loop.body")
    end = builder.append_basic_block("loop.end")
    builder.branch(cond)
    builder.position_at_end(cond)
    i = builder.phi(_I64)
    i.add_incoming(start, before)
    builder.cbranch(builder.icmp_signed("<", i, stop), body, end)
    builder.position_at_end(body)
    yield i
    i.add_incoming(builder.add(i, step), builder.block)
    builder.branch(cond)
    builder.position_at_end(end)


def _intrinsic_function(module, name, fnty):
    """The declaration of an LLVM intrinsic in ``module`` (made once)."""
    found = module.globals.get(name)
    return found if found is not None else ir.Function(module, fnty, name)


@intrinsic
def small_mm(typingctx, zero, a, lda, ka, b, ldb, c, ldc, m, n, k, accumulate):
    """Row-major C (m, n) = A (m, k) B (k, n) (+ C when ``accumulate``): addresses and row strides
    in elements, A's element (i, p) at i * lda + p * ka (ka = 1: row-major; lda = 1: A stored
    transposed, as the backward's dW_hh reads dG); ``zero`` only gives the element type. Blocks of
    ROW_BLOCKS[0] rows by VECS vectors of VECTOR_BYTES, their accumulators in registers across the
    whole depth; then single vectors, then (AVX-512) single 32-byte vectors, then single columns;
    then the rows left over, by the shorter row blocks. Each element is the same chain of
    multiply-adds in every block, so the blocking does not change a bit."""
    size = 4 if zero == types.float32 else 8
    lanes = VECTOR_BYTES // size
    widths = [(VECS, lanes), (1, lanes)] + ([(1, 32 // size)] if lanes > 32 // size else []) + [(1, 1)]

    def codegen(context, builder, sig, args):
        F = ir.FloatType() if size == 4 else ir.DoubleType()
        i32 = ir.IntType(32)
        _, a, lda, ka, b, ldb, c, ldc, m, n, k, accumulate = args
        A, B, C = (builder.inttoptr(v, _PTR) for v in (a, b, c))

        def const(v):
            return ir.Constant(_I64, v)

        def element(base, row, ld, col, offset):
            return builder.gep(base, [builder.add(builder.add(builder.mul(row, ld), col), const(offset))],
                               source_etype=F)

        def block(i0, j0, rows, vecs, width):  # C[i0:i0+rows, j0:j0+vecs*width]
            vt = F if width == 1 else ir.VectorType(F, width)
            fma = _intrinsic_function(builder.module, f"llvm.fmuladd.{'v%d' % width if width > 1 else ''}f{size * 8}",
                                      ir.FunctionType(vt, [vt] * 3))
            acc = []
            for _ in range(rows):
                row = []
                for _ in range(vecs):
                    with builder.goto_entry_block():
                        slot = builder.alloca(vt)
                    builder.store(ir.Constant(vt, None), slot)
                    row.append(slot)
                acc.append(row)
            with _counted(builder, const(0), k, const(1)) as p:
                bv = [builder.load(element(B, p, ldb, j0, v * width), typ=vt, align=size) for v in range(vecs)]
                for r in range(rows):
                    av = builder.load(element(A, builder.add(i0, const(r)), lda, builder.mul(p, ka), 0), typ=F)
                    if width > 1:  # broadcast
                        av = builder.insert_element(ir.Constant(vt, ir.Undefined), av, ir.Constant(i32, 0))
                        av = builder.shuffle_vector(av, ir.Constant(vt, ir.Undefined),
                                                    ir.Constant(ir.VectorType(i32, width), None))
                    for v in range(vecs):
                        builder.store(builder.call(fma, [av, bv[v], builder.load(acc[r][v], typ=vt)]), acc[r][v])
            for r in range(rows):
                for v in range(vecs):
                    ptr = element(C, builder.add(i0, const(r)), ldc, j0, v * width)
                    value = builder.load(acc[r][v], typ=vt)
                    with builder.if_else(accumulate) as (add, store):
                        with add:
                            builder.store(builder.fadd(builder.load(ptr, typ=vt, align=size), value), ptr, align=size)
                        with store:
                            builder.store(value, ptr, align=size)

        def tiles(start, count, size):  # [start, stop) of count's whole multiples of size from start
            return start, builder.add(start, builder.mul(builder.sdiv(builder.sub(count, start), const(size)),
                                                         const(size)))

        def rows_from(i0, rows):
            stop = const(0)
            for vecs, width in widths:
                start, stop = tiles(stop, n, vecs * width)
                with _counted(builder, start, stop, const(vecs * width)) as j0:
                    block(i0, j0, rows, vecs, width)

        stop = const(0)
        for rows in ROW_BLOCKS:
            start, stop = tiles(stop, m, rows)
            with _counted(builder, start, stop, const(rows)) as i0:
                rows_from(i0, rows)
        return context.get_dummy_value()

    return types.void(zero, *[types.int64] * 10, types.boolean), codegen


@intrinsic
def pointer(typingctx, addr, like):
    """The address ``addr`` as a pointer to values of the type of ``like`` (for numba's carray)."""

    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], _PTR)

    return types.CPointer(like)(types.int64, like), codegen


@njit(**JIT, inline="always")
def address(arr):
    """The address of an array's first element, as an int64."""
    return np.int64(arr.ctypes.data)


# ---- the entry points, compiled once per dtype ----------------------------------------------------
# The cells' loops call these through their addresses (in the block: rnnkit.kernels.layout), so that
# each is compiled and optimized once per dtype, not once per cell and in every function that
# reaches it. Every argument is an int64: addresses, element counts and strides, flags.

ENTRIES = ("mm", "packed_mm", "pack_rows", "pack_columns", "weights_product")


def entries(like) -> dict:
    """The entry points for the dtype of ``like`` (a zero of it), as Python functions for
    ``numba.cfunc``: name -> function."""
    isz = np.dtype(type(like)).itemsize
    sw = VECS * VECTOR_BYTES // isz  # columns in a strip of a packed matrix: the micro-kernel's block width
    zero_u = np.uint64(0)

    def mm(a, lda, ka, b, ldb, c, ldc, m, n, k, accumulate):
        """Row-major C (m, n) = A (m, k) B (k, n) (+ C): :func:`small_mm`."""
        small_mm(like, a, lda, ka, b, ldb, c, ldc, m, n, k, accumulate != 0)

    def packed_mm(a, lda, p, depth, n, c, ldc, m, accumulate):
        """Row-major C (m, n) = A (m, depth) B (+ C when ``accumulate``), B packed at address p (by
        pack_rows or pack_columns); A's and C's addresses and row strides in elements. Strip by
        strip, so that a strip stays in L1 across all the rows, in chunks of PACKED_DEPTH of the
        depth."""
        for s0 in range(0, n, sw):
            w = min(sw, n - s0)
            for k0 in range(0, depth, PACKED_DEPTH):
                small_mm(like, a + k0 * isz, lda, 1, p + (s0 * depth + k0 * w) * isz, w, c + s0 * isz, ldc, m, w,
                         min(PACKED_DEPTH, depth - k0), accumulate != 0 or k0 > 0)

    def pack_rows(w, rows, H, p, row0, nu, blocks, starts):
        """Pack B = W[rows]^T (H x blocks*nu) at address p, W (rows, H) at address w, B's column
        (k, u) being W's row row0 + k*H + u (gate block k, unit u): strip after strip of ``sw``
        columns (the last narrower), each (depth, width) row-major; ``starts`` (uint64, sw) is
        scratch. Unsigned indices (as in the gate loops): with signed ones numba checks each for
        wraparound, and these loops then ran 1.3-7x slower."""
        n = blocks * nu
        flat = carray(pointer(w, like), (rows * H,))
        P = carray(pointer(p, like), (H * n,))
        first = carray(pointer(starts, zero_u), (sw,))  # where the strip's columns start in flat
        for s0 in range(0, n, sw):
            width = min(sw, n - s0)
            for c in range(width):
                col = s0 + c
                first[c] = np.uint64((row0 + (col // nu) * H + col % nu) * H)
            uw = np.uint64(width)
            base = np.uint64(s0 * H)
            for i in range(np.uint64(0), np.uint64(H)):
                d = base + i * uw
                for c in range(np.uint64(0), uw):
                    P[d + c] = flat[first[c] + i]

    def pack_columns(w, rows, H, p, row0, depth, col0, n):
        """Pack B = W[row0:row0+depth, col0:col0+n] at address p, W (rows, H) at address w, as
        pack_rows does."""
        W = carray(pointer(w, like), (rows, H))
        P = carray(pointer(p, like), (depth * n,))
        for s0 in range(0, n, sw):
            uw = np.uint64(min(sw, n - s0))
            first = np.uint64(col0 + s0)
            base = np.uint64(s0 * depth)
            for i in range(depth):
                d = base + np.uint64(i) * uw
                for c in range(np.uint64(0), uw):
                    P[d + c] = W[row0 + i, first + c]

    def weights_product(a, h, depth, c, GH, H, accumulate):
        """C (G*H, H) at c = A^T S (+ C when ``accumulate``): A (depth, G*H) at a (read as the
        transposed A of small_mm) and S (depth, H) at h, row-major, in chunks of PACKED_DEPTH of the
        depth, each added to the last."""
        for k0 in range(0, depth, PACKED_DEPTH):
            small_mm(like, a + k0 * GH * isz, 1, GH, h + k0 * H * isz, H, c, H, GH, H, min(PACKED_DEPTH, depth - k0),
                     accumulate != 0 or k0 > 0)

    return {"mm": mm, "packed_mm": packed_mm, "pack_rows": pack_rows, "pack_columns": pack_columns,
            "weights_product": weights_product}


# ---- calls by address ---------------------------------------------------------------------------

class _Callee:
    """An opaque pointer called as a function of type ``function_type``: llvmlite takes a call's
    function type from its callee, which an opaque pointer does not carry."""

    def __init__(self, value, function_type):
        self.value, self.function_type, self.type = value, function_type, value.type

    def get_reference(self):
        return self.value.get_reference()


def call_address(builder, addr, fnty, args):
    """Call the function of type ``fnty`` at the int64 address ``addr``."""
    return builder.call(_Callee(builder.inttoptr(addr, _PTR), fnty), args)


@intrinsic
def call(typingctx, fn, args):
    """Call the void function at address ``fn`` with the int64 values in the tuple ``args`` (an
    entry point of :func:`entries`)."""
    n = len(args)

    def codegen(context, builder, sig, llargs):
        fnty = ir.FunctionType(ir.VoidType(), [_I64] * n)
        call_address(builder, llargs[0], fnty, [builder.extract_value(llargs[1], i) for i in range(n)])
        return context.get_dummy_value()

    return types.void(fn, args), codegen


@intrinsic
def _call_fortran(typingctx, fn, args):
    """Call the void function at address ``fn`` with the addresses in the tuple ``args`` as its
    pointer arguments (Fortran passes everything by reference)."""
    n = len(args)

    def codegen(context, builder, sig, llargs):
        fnty = ir.FunctionType(ir.VoidType(), [_PTR] * n)
        call_address(builder, llargs[0], fnty,
                     [builder.inttoptr(builder.extract_value(llargs[1], i), _PTR) for i in range(n)])
        return context.get_dummy_value()

    return types.void(fn, args), codegen


@njit(**JIT)
def gemm(fn, ws, scal, trans_a, m, n, k, a, lda, b, ldb, beta, c, ldc):
    """Column-major C (m x n) = op(A) B + beta C with op(A) = A^T when trans_a, through the Fortran
    ?gemm_ at address ``fn``; ``ws`` (int32, at least 8) holds its integer arguments and the
    characters 'N' and 'T', ``scal`` (the data's dtype, at least 2) alpha and beta."""
    ws[0], ws[1], ws[2], ws[3], ws[4], ws[5] = m, n, k, lda, ldb, ldc
    ws[6] = 78 + 84 * 256  # 'N', 'T' as the bytes of one int32
    scal[0], scal[1] = 1, beta
    pi, ps = address(ws), address(scal)
    chars = pi + 24
    _call_fortran(fn, (chars + (1 if trans_a else 0), chars, pi, pi + 4, pi + 8, ps, a, pi + 12, b, pi + 16,
                       ps + scal.itemsize, c, pi + 20))
