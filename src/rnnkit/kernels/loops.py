"""The one time loop of the fused engine, forward and hand-written BPTT, specialized per cell.

:func:`shard_runner` takes a cell (:class:`rnnkit.kernels.cells.Cell`: its gate count, states,
saved activations and its pointwise forward and backward over one batch row) and returns the
compiled function that runs one shard of a call from its block (:mod:`rnnkit.kernels.layout`). The
cell is a constant of the compiled code: its branches are gone, and its gate loops vectorize.

The caller does the input projection of all steps as one GEMM before the loop, with every bias that
adds straight to a pre-activation folded in: ``xp = x W_ih^T + b_ih + b_hh`` (but b_hh's blocks that
the cell keeps apart with the recurrent product, GRU's b_hn). It does every weight gradient as one
GEMM after the backward loop, but the loop sums the biases' (and W_ih's with one input feature, and
the cell's unit parameters') as it goes, and on batch-row shards each thread makes its share of
W_hh's as one product at the end of its loop. What is left inside the loop is one matrix product
per step (two for a cell with a second product) and the cell's pointwise math, which adds the
product ``h W_hh^T`` to the step's slice of xp and computes in place there, so that xp ends up
holding what the backward pass reads.

Storage, batch-major as the model's tensors, for hidden size H, G gate blocks, T steps; b the batch
row, t the time (not the loop step):

* ``xp`` (B, T, G*H): pre-activations in, and what the cell keeps there out (LSTM and GRU their
  activations; the Elman cell nothing: its derivative comes from h). (B, 1, G*H) when no gradient is
  wanted and the loop projects x itself.
* ``hs`` (B, T+1, H): hidden states on the boundaries between steps. The forward direction reads
  hs[:, t] and writes hs[:, t+1]; the reverse direction reads hs[:, t+1] and writes hs[:, t]. The
  initial state is hs[:, 0] (forward) or hs[:, T] (reverse), the outputs hs[:, 1:] or hs[:, :-1].
* ``cs`` (B, T+1, H): a two-state cell's second state (LSTM's c), the same way; (B, 0, H) else.
* ``acts`` (B, T, A*H): the cell's A saved values per unit (LSTM tanh(c), GRU W_hn h + b_hn or
  r ⊙ h). (B, 1, A*H) scratch when no gradient is wanted.
* ``dG`` (B, T, G*H): the gradient of the loss with respect to the pre-activations xp.
* ``grec`` (B, T, G*H): for a cell that keeps blocks apart, the gradient of the recurrent product
  h W_hh^T + b_hh (it differs from dG in those blocks); (B, T, 0) else.

Each shard runs batch rows [b0, b1) and hidden units [j0, j1). Rows never mix in a recurrence, so
row shards run at once without meeting; unit shards meet at every phase (rnnkit.kernels.sync). A
sequence b is alive at time t when ``lengths[b] > t``; a dead row keeps its state, stores zero
activations (so the caller's GEMMs over them add exact zeros) and passes its gradient through.
Gate blocks are read through views (B, T, G, H) indexed [b, t, k, j] with j from unsigned bounds:
written [.., k * H + j], or with a signed j, numba's wraparound of negative indices turns every
vector load into a gather (measured 2x slower loops); no arithmetic mixes j with signed integers
(numba would make it a float).
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import carray, njit

from .expmath import JIT
from .layout import (ARRAYS, ARRAYS_AT, BACKWARD_OP, DIRECT, FORWARD_OP, PACKED, SLOTS, STARTS, THROUGH_BLAS,
                     _ARRAY_SLOTS)
from .products import address, call, gemm, pointer
from .sync import aborted, begin, block, end, injected, injected_task, next_shard, own_shard, task, task_done, wait
from . import GRU, GRU_RESET_BEFORE, LSTM, RNN_RELU, RNN_TANH  # noqa: E402,F401 - the cells' codes, read here by rnnkit.export

# The arrays of a block, unpacked (one field per array of rnnkit.kernels.layout, by its name), and
# what a cell's pointwise functions get (see rnnkit.kernels.cells).
ForwardArrays = namedtuple("ForwardArrays", [a.name for a in ARRAYS[FORWARD_OP]])
BackwardArrays = namedtuple("BackwardArrays", [a.name for a in ARRAYS[BACKWARD_OP]])
ForwardStep = namedtuple("ForwardStep", "xg rec hs cs ag shared bg prm proj")
BackwardStep = namedtuple("BackwardStep", "dy dh dc hs cs xg ag dGg grecg dan drh shared prm psum")
Scratch = namedtuple("Scratch", "rec shared proj packed scal ready starts ws")


def _unpacker(op: int, cls):
    """The compiled function that makes a block's arrays (``cls``, a namedtuple of them) from their
    addresses and dimensions (``like``: a zero of the data's dtype), written out from the layout."""
    lines = ["def unpack(blk, like):"]
    for k, a in enumerate(ARRAYS[op]):
        at = ARRAYS_AT + _ARRAY_SLOTS * k
        dims = ", ".join(f"blk[{at + 1 + d}]" for d in range(a.ndim))
        lines.append(f"    {a.name} = carray(pointer(blk[{at}], {'np.int64(0)' if a.integer else 'like'}), ({dims},))")
    lines.append(f"    return cls({', '.join(a.name for a in ARRAYS[op])})")
    scope = {"carray": carray, "pointer": pointer, "np": np, "cls": cls}
    exec("\n".join(lines), scope)  # noqa: S102 - source made here, from the layout's names
    return njit(**JIT, inline="always")(scope["unpack"])


unpack_forward = _unpacker(FORWARD_OP, ForwardArrays)
unpack_backward = _unpacker(BACKWARD_OP, BackwardArrays)

_OP, _REVERSE, _GEMM = SLOTS["op"], SLOTS["reverse"], SLOTS["gemm"]
_SCRATCH, _STRIDE, _PRODUCTS = SLOTS["scratch"], SLOTS["scratch_stride"], SLOTS["products"]
_UNITS, _ROWS, _PROJECT, _SHARDS_AT = SLOTS["units"], SLOTS["rows"], SLOTS["project"], SLOTS["shards_at"]
_PARTIES = SLOTS["parties"]
_MM, _PACKED_MM, _PACK_ROWS, _PACK_COLUMNS, _WEIGHTS_PRODUCT = (
    SLOTS[n] for n in ("mm", "packed_mm", "pack_rows", "pack_columns", "weights_product"))
_S = {name: SLOTS[name] for name in SLOTS if name.startswith("s_")}
_S_REC, _S_SHARED, _S_PROJ, _S_PACKED, _S_SCAL = (_S[f"s_{n}"] for n in ("rec", "shared", "proj", "packed", "scal"))
_S_READY, _S_STARTS, _S_WS, _S_INTS = (_S[f"s_{n}"] for n in ("ready", "starts", "ws", "ints"))


@njit(**JIT, inline="always")
def view4(arr, like, d2, d3):
    """arr (d0, d1, d2*d3) as (d0, d1, d2, d3): gate blocks apart."""
    return carray(pointer(address(arr), like), (arr.shape[0], arr.shape[1], d2, d3))


@njit(**JIT, inline="always")
def scratch(blk, s, like, isz, G, H, blocks, parties, forward):
    """Shard s's scratch regions (see rnnkit.kernels.layout.scratch_layout); ``isz`` the dtype's
    size."""
    base = blk[_SCRATCH] + s * blk[_STRIDE]
    ints = base + blk[_S_INTS]
    mode = blk[_PRODUCTS]
    packs = mode != THROUGH_BLAS if forward else mode == PACKED
    rec = carray(pointer(base + blk[_S_REC] * isz, like), (blk[_ROWS] * blocks * blk[_UNITS] if forward else 0,))
    shared = carray(pointer(base + blk[_S_SHARED] * isz, like), (H,))
    proj = carray(pointer(base + blk[_S_PROJ] * isz, like), (2, G, H if forward and blk[_PROJECT] != 0 else 0))
    packed = carray(pointer(base + blk[_S_PACKED] * isz, like), (G * H * H if packs else 0,))
    scal = carray(pointer(base + blk[_S_SCAL] * isz, like), (2,))
    ready = carray(pointer(ints + blk[_S_READY] * 8, np.int64(0)), (parties,))
    starts = carray(pointer(ints + blk[_S_STARTS] * 8, np.uint64(0)), (STARTS,))
    ws = carray(pointer(ints + blk[_S_WS] * 8, np.int32(0)), (8,))
    return Scratch(rec, shared, proj, packed, scal, ready, starts, ws)


def _no_forward_second(c, b, t, tx, p, q, j0, j1):
    pass


def _no_backward_second(c, b, t, p, j0, j1):
    pass


def shard_runner(cell, dtype: str, checked: bool = False):
    """The bodies ``forward(data)`` and ``backward(data)`` of ``cell`` for ``dtype``, to be compiled
    as C functions of a block's address (rnnkit.kernels.build); ``checked``: with the tests' failure
    injection (rnnkit.kernels.sync.injected), for a build that checks bounds and catches exceptions. Everything but the products
    (rnnkit.kernels.products' entry points, called through their addresses in the block) is
    compiled into it, and the cell's properties are constants: the branches of what the cell does
    not have are gone before anything is typed."""
    like = np.dtype(dtype).type(0.0)
    G = cell.gates
    two = cell.states == 2
    recurrent = cell.recurrent
    second = cell.second is not None
    blocks = (G - 1 if second else G) if recurrent else 0  # gate blocks of the step's first product
    phases = 2 if second else 1
    keeps_pre = cell.keeps_pre
    apart = tuple(k in cell.apart for k in range(G))
    has_apart = len(cell.apart) > 0
    first_grad = 1 if second else 0  # (with a second product, block 0's gradient comes from it)
    P = len(cell.params)
    inline = dict(JIT, inline="always")
    cell_forward = njit(**inline)(cell.forward)
    cell_backward = njit(**inline)(cell.backward)
    second_parts = cell.second or (_no_forward_second, _no_backward_second)  # (typed, never run)
    cell_forward_second = njit(**inline)(second_parts[0])
    cell_backward_second = njit(**inline)(second_parts[1])

    # ---- forward ------------------------------------------------------------------------------

    @njit(**inline)
    def pack_forward(blk, W, sc, u0, u1):
        """Pack the products of units [u0, u1) into their region of the shard's packed scratch
        (from element u0 * G*H): W^T's columns of the step's first product, (gate, unit), then those
        of the second product's block."""
        GH, H = W.shape
        U0 = np.int64(u0)
        nu = np.int64(u1) - U0
        isz = W.itemsize
        p = address(sc.packed) + U0 * GH * isz
        call(blk[_PACK_ROWS], (address(W), GH, H, p, U0, nu, np.int64(blocks), address(sc.starts)))
        if second:
            call(blk[_PACK_ROWS], (address(W), GH, H, p + blocks * nu * H * isz, blocks * H + U0, nu, np.int64(1),
                                   address(sc.starts)))

    @njit(**inline)
    def times_wt(blk, sc, W, at, row0, nblocks, nu, x, ldx, c, ldc, m, accumulate):
        """The forward's products: row-major C (m, nblocks*nu) = X (m, H) B (+ C when
        ``accumulate``), B's column (k, u) being W's row row0 + k*H + u; from W packed at element
        ``at`` of the scratch (pack_forward), else through BLAS, one call per gate block
        (row-major C = X W_k^T is column-major C^T = W_k X^T)."""
        H = W.shape[1]
        isz = W.itemsize
        if sc.packed.size != 0:
            call(blk[_PACKED_MM], (x, ldx, address(sc.packed) + at * isz, H, nblocks * nu, c, ldc, m,
                                   np.int64(accumulate)))
        else:
            for k in range(nblocks):
                gemm(blk[_GEMM], sc.ws, sc.scal, True, nu, m, H, address(W) + (row0 + k * H) * H * isz, H, x, ldx,
                     1 if accumulate else 0, c + k * nu * isz, ldc)

    @njit(**inline)
    def forward_first(blk, a, sc, xg, ag, bg, b0, b1, j0, j1, t, p, q, ta, tx, hrow):
        """Units [j0, j1) of step t: the step's first product and the cell's forward (for a cell
        with a second product, its first part)."""
        hs, cs = a.hs, a.cs
        T, H = hs.shape[1] - 1, hs.shape[2]
        nb = b1 - b0
        J0 = np.int64(j0)
        nu = np.int64(j1) - J0
        zero = hs.dtype.type(0.0)
        rec = carray(pointer(address(sc.rec), zero), (nb, blocks, nu))
        if recurrent:
            times_wt(blk, sc, a.W_hh, J0 * G * H, J0, blocks, nu, hrow, (T + 1) * H, address(rec), blocks * nu, nb,
                     False)
        project = sc.proj.shape[2] != 0
        c = ForwardStep(xg, rec, hs, cs, ag, sc.shared, bg, a.params, sc.proj)
        for b in range(b0, b1):
            if a.lengths[b] <= t:
                for j in range(j0, j1):
                    hs[b, q, j] = hs[b, p, j]
                if two:
                    for j in range(j0, j1):
                        cs[b, q, j] = cs[b, p, j]
                for k in range(G):
                    for j in range(j0, j1):
                        xg[b, tx, k, j] = zero
                for k in range(ag.shape[2]):
                    for j in range(j0, j1):
                        ag[b, ta, k, j] = zero
                continue
            v = a.x[b, t, 0] if project else zero
            if keeps_pre:
                if project:  # this row's input projection, this step's
                    for k in range(G):
                        for j in range(j0, j1):
                            xg[b, tx, k, j] = sc.proj[0, k, j] + v * sc.proj[1, k, j]
            cell_forward(c, b, b - b0, t, tx, ta, p, q, j0, j1, v, project)

    @njit(**inline)
    def forward_second(blk, a, sc, xg, ag, bg, b0, b1, j0, j1, t, p, q, ta, tx, xrow):
        """Units [j0, j1) of step t's second part: xp[:, t]'s last block += saved[0] W_last^T, then
        the cell's second part."""
        hs, acts = a.hs, a.acts
        H = hs.shape[2]
        nb = b1 - b0
        J0 = np.int64(j0)
        nu = np.int64(j1) - J0
        isz = hs.itemsize
        TA = acts.shape[1]
        times_wt(blk, sc, a.W_hh, J0 * G * H + blocks * nu * H, blocks * H + J0, 1, nu,
                 address(acts) + (b0 * TA + ta) * acts.shape[2] * isz, TA * acts.shape[2],
                 xrow + (blocks * H + J0) * isz, xg.shape[1] * G * H, nb, True)
        c = ForwardStep(xg, sc.rec, hs, a.cs, ag, sc.shared, bg, a.params, sc.proj)
        for b in range(b0, b1):
            if a.lengths[b] > t:
                cell_forward_second(c, b, t, tx, p, q, j0, j1)

    def forward(data):
        """The recurrence over all T steps for rows [b0, b1) and units [j0, j1), filling hs, cs
        and acts and turning xp into what the cell keeps there, in place.

        Where one thread has every unit (parties = 1) the loop copies its rows' initial states
        (h_init, c_init (B, H)) into hs and cs first, and, with one input feature (``project``),
        makes each step's xp for its rows as it comes to it, in cache, ``(b_ih + b_hh) + x W_ih^T``
        (an outer product; without the blocks the cell keeps apart), with the roundings of the
        caller's addcmul: a pass over all steps before the first would write megabytes, read back
        step by step. Unit shards share the rows, so their caller does both.

        ``data``: the block's address; the thread takes shards from it until none is left (see
        rnnkit.kernels.sync.next_shard). The arrays are made here from the block, not passed in: so
        LLVM sees that none of them holds a reference count, and numba's counting around each use
        of one folds away. (One function, not a loop around a call: each function numba compiles
        separately is optimized again in each one that calls it.)"""
        blk = block(data)
        old = begin(blk)
        while True:
            s = next_shard(blk)
            if s < 0:
                break
            if checked:
                injected(blk, s)
            at = blk[_SHARDS_AT] + 4 * s
            b0, b1, j0, j1 = blk[at], blk[at + 1], np.uint64(blk[at + 2]), np.uint64(blk[at + 3])
            parties = blk[_PARTIES]
            a = unpack_forward(blk, like)
            sc = scratch(blk, s, like, a.hs.itemsize, G, a.hs.shape[2], blocks, parties, True)
            xp, hs, cs, acts = a.xp, a.hs, a.cs, a.acts
            B, TX, GH = xp.shape
            T, H = hs.shape[1] - 1, hs.shape[2]
            zero = hs.dtype.type(0.0)
            isz = xp.itemsize
            reverse = blk[_REVERSE] != 0
            me = own_shard(blk, parties, j0)
            xg = view4(xp, zero, G, H)  # (B, T or 1, G, H)
            TA = acts.shape[1]
            ag = view4(acts, zero, acts.shape[2] // H, H)  # (B, TA, A, H)
            bg = carray(pointer(address(a.b_hh), zero), (G, H))
            x0, h0 = address(xp), address(hs)
            for k in range(parties):
                sc.ready[k] = 0
            if sc.proj.shape[2] != 0:
                for k in range(G):
                    for j in range(H):
                        folded = not (has_apart and apart[k])
                        sc.proj[0, k, j] = a.b_ih[k * H + j] + a.b_hh[k * H + j] if folded else a.b_ih[k * H + j]
                        sc.proj[1, k, j] = a.W_ih[k * H + j, 0]
            if parties == 1:  # this thread's rows' initial states
                first = T if reverse else 0
                for b in range(b0, b1):
                    for j in range(H):
                        hs[b, first, j] = a.h_init[b, j]
                    if two:
                        for j in range(H):
                            cs[b, first, j] = a.c_init[b, j]
            for e in range(T * phases):
                step, phase = e // phases, e % phases
                t = T - 1 - step if reverse else step
                p, q = (t + 1, t) if reverse else (t, t + 1)
                ta = t if TA == T else 0
                tx = t if TX == T else 0  # xp's step: t, or its one step where it has one
                if wait(blk, parties, e):  # every unit of the last phase written (or the call aborted)
                    break
                for i in range(parties):
                    mine, u0, u1 = task(blk, parties, me, i, e, j0, j1)
                    if not mine:
                        continue
                    k = (me + i) % parties  # the task's shard
                    if checked:
                        injected_task(blk, k, e)
                    if recurrent:
                        if sc.packed.size != 0 and sc.ready[k] == 0:
                            pack_forward(blk, a.W_hh, sc, u0, u1)
                            sc.ready[k] = 1
                    if second:
                        if phase == 0:
                            forward_first(blk, a, sc, xg, ag, bg, b0, b1, u0, u1, t, p, q, ta, tx,
                                          h0 + (b0 * (T + 1) + p) * H * isz)
                        else:
                            forward_second(blk, a, sc, xg, ag, bg, b0, b1, u0, u1, t, p, q, ta, tx,
                                           x0 + (b0 * TX + tx) * GH * isz)
                    else:
                        forward_first(blk, a, sc, xg, ag, bg, b0, b1, u0, u1, t, p, q, ta, tx,
                                      h0 + (b0 * (T + 1) + p) * H * isz)
                    task_done(blk, parties)
        end(blk, old)


    # ---- backward -----------------------------------------------------------------------------

    @njit(**inline)
    def pack_backward(blk, W, sc, u0, u1):
        """Pack the backward's products of units [u0, u1) into their region of the shard's packed
        scratch (from element u0 * G*H): W's columns of those units over the first product's gate
        rows, then the second product's block's."""
        GH, H = W.shape
        U0 = np.int64(u0)
        nu = np.int64(u1) - U0
        isz = W.itemsize
        p = address(sc.packed) + U0 * GH * isz
        call(blk[_PACK_COLUMNS], (address(W), GH, H, p, np.int64(0), np.int64(blocks * H), U0, nu))
        if second:
            call(blk[_PACK_COLUMNS], (address(W), GH, H, p + blocks * H * nu * isz, np.int64(blocks * H), H, U0, nu))

    @njit(**inline)
    def times_w(blk, sc, direct, W, at, row0, a_, lda, depth, U0, nu, c, m, accumulate):
        """The backward's products: row-major C (m, nu) = A (m, depth) W[row0:row0+depth, U0:U0+nu]
        (+ C when ``accumulate``), A's and C's addresses, C's row stride H. From W's packed columns
        at element ``at`` of the scratch (pack_backward); where that is empty, W in place (small:
        ``direct``) or through BLAS (row-major C = A W' is column-major C^T = W'^T A^T)."""
        H = W.shape[1]
        isz = W.itemsize
        w = address(W) + (row0 * H + U0) * isz
        if sc.packed.size != 0:
            call(blk[_PACKED_MM], (a_, lda, address(sc.packed) + at * isz, depth, nu, c, H, m, np.int64(accumulate)))
        elif direct:
            call(blk[_MM], (a_, lda, np.int64(1), w, H, c, H, m, nu, depth, np.int64(accumulate)))
        else:
            gemm(blk[_GEMM], sc.ws, sc.scal, False, nu, m, depth, w, H, a_, lda, 1 if accumulate else 0, c, H)

    @njit(**inline)
    def add_sums(dGg, grecg, x, sg, lengths, b0, b1, j0, j1, t, k0, k1, final):
        """Add step t's rows [b0, b1) of gate blocks [k0, k1), units [j0, j1), to the shard's sums
        sg (3, G, H) as the loop goes (each step's dG is still in cache then, where a sum after the
        loop reads all of it again): dG's (the input bias's gradient), dG times x's where I = 1
        (W_ih's, a weighted sum then), and b_hh's blocks kept apart (grec's). At the ``final``
        step, b_hh's other blocks from the input bias's: the caller's gradients are then views."""
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
            if has_apart:
                if k0 == 0:
                    for k in range(G):
                        if apart[k]:
                            for j in range(j0, j1):
                                sg[2, k, j] += grecg[b, t, k, j]
        if final:
            for k in range(k0, k1):
                if not (has_apart and apart[k]):
                    for j in range(j0, j1):
                        sg[2, k, j] = sg[0, k, j]

    @njit(**inline)
    def shard_weights_grad(blk, g, hs, h_prev, reverse, c, GH, b0, b1):
        """Rows [b0, b1)' share of dW_hh = grec^T h_prev (G*H, H) at address c (grec: the gradient
        of the recurrent product, (B, T, G*H) at address g): one product after the loop, while the
        last steps' dG are still in cache. Over the rows' steps of h_prev where the caller gave one
        (the loop copied the states into it); else row by row, over each row's states in hs in
        place (no copy, but C read and written once per row, which only a small C affords)."""
        B, T1, H = hs.shape
        T = T1 - 1
        isz = hs.itemsize
        if h_prev.shape[0] != 0:
            call(blk[_WEIGHTS_PRODUCT], (g + b0 * T * GH * isz, address(h_prev) + b0 * T * H * isz, (b1 - b0) * T, c,
                                         GH, H, np.int64(0)))
            return
        for b in range(b0, b1):
            call(blk[_WEIGHTS_PRODUCT], (g + b * T * GH * isz, address(hs) + (b * T1 + (1 if reverse else 0)) * H * isz,
                                         T, c, GH, H, np.int64(b > b0)))

    @njit(**inline)
    def backward_gates(a, c, b0, b1, j0, j1, t, p, q, copy_prev):
        """Units [j0, j1) of step t: the cell's backward from dh (the loss's and the later steps'),
        and h_prev[:, t] where ``copy_prev`` (for the caller's dW_hh GEMM)."""
        zero = a.hs.dtype.type(0.0)
        for b in range(b0, b1):
            if copy_prev:
                for j in range(j0, j1):
                    a.h_prev[b, t, j] = a.hs[b, p, j]
            if a.lengths[b] <= t:
                for k in range(G):
                    for j in range(j0, j1):
                        c.dGg[b, t, k, j] = zero
                if has_apart:
                    for k in range(G):
                        for j in range(j0, j1):
                            c.grecg[b, t, k, j] = zero
                if second:
                    for j in range(j0, j1):
                        a.dan[b, j] = zero
                continue
            cell_backward(c, b, t, p, q, j0, j1)

    @njit(**inline)
    def backward_second(blk, a, c, sc, direct, b0, b1, j0, j1, t, p):
        """Units [j0, j1) of step t's second part: drh = dan W_last, then the cell's second part."""
        H = a.hs.shape[2]
        nb = b1 - b0
        J0 = np.int64(j0)
        nu = np.int64(j1) - J0
        isz = a.dh.itemsize
        times_w(blk, sc, direct, a.W_hh, J0 * G * H + blocks * H * nu, blocks * H, address(a.dan) + b0 * H * isz, H,
                H, J0, nu, address(a.drh) + (b0 * H + J0) * isz, nb, False)
        for b in range(b0, b1):
            if a.lengths[b] > t:
                cell_backward_second(c, b, t, p, j0, j1)

    def backward(data):
        """BPTT for rows [b0, b1) and units [j0, j1): fill dG and turn dh, dc (B, H) from the
        final states' gradients into the initial states', in place. dy (B, T, H) is the outputs'
        gradient; xp holds what the forward kept. Where one thread has every unit (parties = 1)
        the loop first copies its rows of dh_n, dc_n into dh, dc; unit shards share the rows, so
        their caller does.

        dan, drh (B, H) for a cell with a second product (else (B, 0)): the gradients of the last
        block's pre-activation and of saved[0]. h_prev (B, T, H): each step's previous state,
        copied from hs for the caller's dW_hh GEMM (a copy in the loop's threads costs nothing
        beside the gates, one in torch after the loop a call over all of hs); (0, 0, 0) where the
        loop's own dW_hh share reads the states in hs. sums (S, 3*G*H + P*H [+ G*H*H]): each
        shard's sums over its rows and steps, in its row sums[slot[b0]] (unit shards share row 0),
        over its units (add_sums; then the cell's unit parameters' gradients, which its backward
        adds up); where the row is longer (row shards: the caller's choice), the rest is the
        shard's dW_hh = grec^T h_prev (shard_weights_grad). The caller adds up the S rows.
        (The block, its shards and its arrays as in forward.)"""
        blk = block(data)
        old = begin(blk)
        while True:
            s = next_shard(blk)
            if s < 0:
                break
            if checked:
                injected(blk, s)
            at = blk[_SHARDS_AT] + 4 * s
            b0, b1, j0, j1 = blk[at], blk[at + 1], np.uint64(blk[at + 2]), np.uint64(blk[at + 3])
            parties = blk[_PARTIES]
            a = unpack_backward(blk, like)
            sc = scratch(blk, s, like, a.hs.itemsize, G, a.hs.shape[2], blocks, parties, False)
            dG, hs, xp, acts = a.dG, a.hs, a.xp, a.acts
            B, T, GH = dG.shape
            H = hs.shape[2]
            zero = hs.dtype.type(0.0)
            nb = b1 - b0
            isz = dG.itemsize
            reverse = blk[_REVERSE] != 0
            direct = blk[_PRODUCTS] == DIRECT
            rows = blocks * H  # gate rows of the first recurrent product
            me = own_shard(blk, parties, j0)
            s = a.slot[b0]
            L = a.sums.shape[1]
            row = address(a.sums) + s * L * isz
            sg = carray(pointer(row, zero), (3, G, H))  # this shard's sums (see add_sums)
            psum = carray(pointer(row + 3 * GH * isz, zero), (P, H))
            in_loop = L > 3 * GH + P * H  # this shard makes its dW_hh share
            copy_prev = a.h_prev.shape[0] != 0  # (else the share reads the states in hs)
            dGg = view4(dG, zero, G, H)
            xg = view4(xp, zero, G, H)
            ag = view4(acts, zero, acts.shape[2] // H, H)
            grecg = view4(a.grec, zero, a.grec.shape[2] // H, H)
            c = BackwardStep(a.dy, a.dh, a.dc, hs, a.cs, xg, ag, dGg, grecg, a.dan, a.drh, sc.shared, a.params, psum)
            for k in range(parties):
                sc.ready[k] = 0
            g0 = address(a.grec) if has_apart else address(dG)  # the gradient of h W^T, (B, T, G*H)
            if parties == 1:  # this thread's rows (unit shards: the caller)
                for b in range(b0, b1):
                    for j in range(H):
                        a.dh[b, j] = a.dh_n[b, j]
                    if two:
                        for j in range(H):
                            a.dc[b, j] = a.dc_n[b, j]
            # A phase's tasks: the last step's product into dh (its gradient needs every unit of the
            # last step's), then this step's gates; with a second product a second phase. One more
            # phase after the last step for its product.
            for e in range(T * phases + 1):
                step, phase = e // phases, e % phases
                t = step if reverse else T - 1 - step  # this step's time (step T: none)
                last = t - 1 if reverse else t + 1  # the last step's time
                p, q = (t + 1, t) if reverse else (t, t + 1)
                if wait(blk, parties, e):  # every unit of the last phase written (or the call aborted)
                    break
                for i in range(parties):
                    mine, u0, u1 = task(blk, parties, me, i, e, j0, j1)
                    if not mine:
                        continue
                    U0 = np.int64(u0)
                    nu = np.int64(u1) - U0
                    k = (me + i) % parties  # the task's shard
                    if checked:
                        injected_task(blk, k, e)
                    if recurrent:
                        if sc.packed.size != 0 and sc.ready[k] == 0:
                            pack_backward(blk, a.W_hh, sc, u0, u1)
                            sc.ready[k] = 1
                    if second and phase == 1:
                        backward_second(blk, a, c, sc, direct, b0, b1, u0, u1, t, p)
                        add_sums(dGg, grecg, a.x, sg, a.lengths, b0, b1, u0, u1, t, 0, first_grad, step == T - 1)
                    else:
                        if recurrent:
                            if step > 0:  # dh[:, units] += (gradient of h W^T) W[:, units]
                                times_w(blk, sc, direct, a.W_hh, U0 * GH, 0, g0 + (b0 * T + last) * GH * isz, T * GH, rows,
                                        U0, nu, address(a.dh) + (b0 * H + U0) * isz, nb, True)
                        if step == 0:  # this shard's sums (unit shards share the row: their units only)
                            for kk in range(3):
                                for g in range(G):
                                    for j in range(u0, u1):
                                        sg[kk, g, j] = zero
                            for kk in range(P):
                                for j in range(u0, u1):
                                    psum[kk, j] = zero
                        if step < T:
                            backward_gates(a, c, b0, b1, u0, u1, t, p, q, copy_prev)
                            add_sums(dGg, grecg, a.x, sg, a.lengths, b0, b1, u0, u1, t, first_grad, G, step == T - 1)
                    task_done(blk, parties)
            if recurrent:
                if in_loop and not aborted(blk):
                    shard_weights_grad(blk, g0, hs, a.h_prev, reverse, row + (3 * GH + P * H) * isz, GH, b0, b1)
        end(blk, old)


    return forward, backward
