"""The Triton kernels of ``engine="triton"`` (rnnkit.triton_engine): one layer-direction's time loop,
forward and backward, for the cells in :data:`CELLS`.

Two ways to run them (rnnkit.triton_engine picks by the hidden size):

* **persistent**: one program owns BB batch rows and every hidden unit, and loops over time inside
  the kernel. Rows never meet, so no program waits for another (and Triton's interpreter, which runs
  one program at a time, runs them as a GPU does). Each step it computes its rows' recurrent
  products a tile of units at a time (BJ output units by BK inputs, ``tl.dot``), applies the cell's
  pointwise math and writes the new state, which the next step reads back (from L1/L2); a
  ``tl.debug_barrier`` between the phases of a step orders the program's own writes and reads.
  Where every unit fits one tile and W_hh is small (HOLD), its blocks are loaded once, before the
  first step, and held in registers; otherwise they are read from memory each step (L2 holds them
  at the sizes this way serves).
* **per step**: the caller computes each step's products as one GEMM (``rec``: REC=True) and
  launches the kernel for that one step, one program per tile of rows and units (PHASE: which part
  of the step: the reset-before GRU's n block, and the backward's r gradient, wait for a GEMM in
  between; the backward's product with W_hh is the caller's GEMM).

The input projection (W_ih x + biases) comes in precomputed (one GEMM over every step), and the
weight gradients leave as the pre-activations' gradients, which the caller turns into GEMMs over
every step. Layouts (all contiguous; G gate blocks of H units, in torch.nn's order):

* ``xg`` (B, T, G*H): the pre-activations from the input, with every bias but GRU's b_hn (reset
  after) folded in;
* ``hs`` (B, T+1, H): the states, hs[:, 0] the initial one; ``cs`` the same for LSTM's c;
* ``acts`` (B, T, G*H): the gates' activations (LSTM i f g o; GRU r z n), what the backward reads;
* ``aux`` (B, T, H): GRU (reset after) W_hn h + b_hn; GRU (reset before) r ⊙ h, the n block's
  product input;
* ``dg`` (B, T, G*H): the gradient of xg; ``dr`` the gradient of the recurrent products (the same
  tensor but for GRU reset after, whose n block's product is scaled by r);
* ``dh`` (2, B, H): the gradient of h carried between steps (two buffers, one per parity of the
  step); ``dc`` (B, H) that of c;
* ``rec`` (B, ·) with ``rec_row`` elements a row: a step's products, computed by the caller.

A row past its length (``lengths``) keeps its state, and its gradient passes through unchanged.
"""

from __future__ import annotations

import triton
import triton.language as tl

# The cells' codes (constants of the compiled kernels, as globals they must be tl.constexpr)
RNN_TANH, RNN_RELU, LSTM, GRU, GRU_RESET_BEFORE = (tl.constexpr(code) for code in range(5))
# rnnkit.kernels.cells' name of each cell -> (its code here, its gate blocks)
CELLS = {"rnn_tanh": (0, 1), "rnn_relu": (1, 1), "lstm": (2, 4), "gru": (3, 3), "gru_reset_before": (4, 3)}


@triton.jit
def _sigmoid(a):
    return 1.0 / (1.0 + tl.exp(-a))


@triton.jit
def _tanh(a):
    e = tl.exp(-2.0 * tl.abs(a))  # (no overflow at any a)
    t = (1.0 - e) / (1.0 + e)
    return tl.where(a < 0, -t, t)


@triton.jit
def _relu(a):
    return tl.where(a > 0, a, 0.0)


@triton.jit
def _product(src, src_row, w, w_m, w_n, rows, rmask, n, nmask, M,
             BB: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr, PREC: tl.constexpr):
    """sum over m < M of src[rows, m] * w[m * w_m + n * w_n]: a (BB, BN) tile."""
    acc = tl.zeros((BB, BN), dtype=src.dtype.element_ty)
    for m0 in range(0, M, BM):
        m = m0 + tl.arange(0, BM)
        mmask = m < M
        a = tl.load(src + rows[:, None] * src_row + m[None, :], mask=rmask[:, None] & mmask[None, :], other=0.0)
        b = tl.load(w + m[:, None] * w_m + n[None, :] * w_n, mask=mmask[:, None] & nmask[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PREC)
    return acc


@triton.jit
def _tile(base, row, rows, j):
    """Addresses of rows' units j in an array of ``row`` elements a batch row."""
    return base + rows[:, None] * row + j[None, :]


@triton.jit
def _rows(lengths, B, BB: tl.constexpr, HAS_LENGTHS: tl.constexpr):
    """This program's batch rows (int64), which of them exist (< B), and their lengths (without
    lengths: zeros, unread)."""
    rows = tl.program_id(0) * BB + tl.arange(0, BB)
    rmask = rows < B
    rows = rows.to(tl.int64)
    if HAS_LENGTHS:
        length = tl.load(lengths + rows, mask=rmask, other=0)
    else:
        length = rows * 0
    return rows, rmask, length


@triton.jit
def _held(w, H, G: tl.constexpr, w_m, w_n, BM: tl.constexpr, BN: tl.constexpr):
    """W_hh's G blocks as (BM, BN) tiles, loaded once (a tuple): w_k[m * w_m + n * w_n], so (1, H)
    gives W_k^T (h W_k^T), (H, 1) W_k (d W_k)."""
    m = tl.arange(0, BM)[:, None]
    n = tl.arange(0, BN)[None, :]
    inside = (m < H) & (n < H)
    first = tl.load(w + m * w_m + n * w_n, mask=inside, other=0.0)
    if G == 1:
        tiles = (first,)
    elif G == 3:
        tiles = (first, tl.load(w + H * H + m * w_m + n * w_n, mask=inside, other=0.0),
                 tl.load(w + 2 * H * H + m * w_m + n * w_n, mask=inside, other=0.0))
    else:
        tiles = (first, tl.load(w + H * H + m * w_m + n * w_n, mask=inside, other=0.0),
                 tl.load(w + 2 * H * H + m * w_m + n * w_n, mask=inside, other=0.0),
                 tl.load(w + 3 * H * H + m * w_m + n * w_n, mask=inside, other=0.0))
    return tiles


@triton.jit
def _times(k: tl.constexpr, src, src_row, w, w_m, w_n, held, rows, rmask, j, jmask, H, HOLD: tl.constexpr,
           BB: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """src[rows] times gate block k of W_hh, for units j: (w_m, w_n) = (1, H) for h W_k^T, (H, 1) for
    d W_k; from the tile held since the kernel began (HOLD: all units in one tile), else read."""
    if HOLD:
        m = tl.arange(0, BK)
        a = tl.load(src + rows[:, None] * src_row + m[None, :], mask=rmask[:, None] & (m < H)[None, :], other=0.0)
        return tl.dot(a, held[k], tl.zeros((BB, BJ), dtype=src.dtype.element_ty), input_precision=PREC)
    else:
        return _product(src, src_row, w + k * H * H, w_m, w_n, rows, rmask, j, jmask, H, BB, BJ, BK, PREC)


@triton.jit
def _rec(k: tl.constexpr, kk: tl.constexpr, src, src_row, w, held, rec, rec_row, rows, rmask, j, jmask, H,
         REC: tl.constexpr, HOLD: tl.constexpr, BB: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr,
         PREC: tl.constexpr):
    """Gate block k's recurrent product src W_k^T for rows' units j: block kk of ``rec`` (REC), or
    computed here."""
    if REC:
        return tl.load(_tile(rec + kk * H, rec_row, rows, j), mask=rmask[:, None] & jmask[None, :], other=0.0)
    else:
        return _times(k, src, src_row, w, 1, H, held, rows, rmask, j, jmask, H, HOLD, BB, BJ, BK, PREC)


@triton.jit
def _pre(k: tl.constexpr, step, REC: tl.constexpr, HOLD: tl.constexpr, BB: tl.constexpr, BJ: tl.constexpr,
         BK: tl.constexpr, PREC: tl.constexpr):
    """Gate block k's pre-activation for rows' units j: the input's (xg at this step) plus h W_k^T;
    ``step``: (x_t, xrow, h, h_row, w, held, rec, rec_row, rows, rmask, j, jmask, m2, H), the
    forward kernel's names for this step and tile."""
    x_t, xrow, h, h_row, w, held, rec, rec_row, rows, rmask, j, jmask, m2, H = step
    return tl.load(_tile(x_t + k * H, xrow, rows, j), mask=m2, other=0.0) + _rec(
        k, k, h, h_row, w, held, rec, rec_row, rows, rmask, j, jmask, H, REC, HOLD, BB, BJ, BK, PREC)


@triton.jit
def forward_kernel(xg, w, bn, hs, cs, acts, aux, rec, rec_row, lengths, B, T, H, t0, steps,
                   CELL: tl.constexpr, G: tl.constexpr, HAS_LENGTHS: tl.constexpr, REC: tl.constexpr,
                   PHASE: tl.constexpr, HOLD: tl.constexpr, BB: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr,
                   PREC: tl.constexpr):
    """Steps t0 .. t0+steps-1. PHASE (the reset-before GRU): 0 the whole step, 1 r and z, 2 the rest.
    HOLD: W_hh's blocks loaded once, before the first step, and held (every unit in one tile)."""
    rows, rmask, length = _rows(lengths, B, BB, HAS_LENGTHS)
    if HOLD:
        held = _held(w, H, G, 1, H, BK, BJ)
    else:
        held = (0,)
    GH = G * H
    xrow, srow, hrow = T * GH, (T + 1) * H, T * H  # elements a batch row: xg/acts, hs/cs, aux
    first, stride = tl.program_id(1) * BJ, tl.num_programs(1) * BJ  # this program's tiles of units
    for t in range(t0, t0 + steps):
        h_now, h_next = hs + t * H, hs + (t + 1) * H
        x_t, a_t, aux_t = xg + t * GH, acts + t * GH, aux + t * H
        if HAS_LENGTHS:
            alive = (t < length)[:, None]
        if CELL == GRU_RESET_BEFORE and PHASE != 2:  # r and z first: the n block's product reads r ⊙ h
            for j0 in range(first, H, stride):
                j = j0 + tl.arange(0, BJ)
                jmask = j < H
                m2 = rmask[:, None] & jmask[None, :]
                step = (x_t, xrow, h_now, srow, w, held, rec, rec_row, rows, rmask, j, jmask, m2, H)
                r = _sigmoid(_pre(0, step, REC, HOLD, BB, BJ, BK, PREC))
                z = _sigmoid(_pre(1, step, REC, HOLD, BB, BJ, BK, PREC))
                h = tl.load(_tile(h_now, srow, rows, j), mask=m2, other=0.0)
                tl.store(_tile(a_t, xrow, rows, j), r, mask=m2)
                tl.store(_tile(a_t + H, xrow, rows, j), z, mask=m2)
                tl.store(_tile(aux_t, hrow, rows, j), r * h, mask=m2)
            tl.debug_barrier()
        if CELL != GRU_RESET_BEFORE or PHASE != 1:
            for j0 in range(first, H, stride):
                j = j0 + tl.arange(0, BJ)
                jmask = j < H
                m2 = rmask[:, None] & jmask[None, :]
                step = (x_t, xrow, h_now, srow, w, held, rec, rec_row, rows, rmask, j, jmask, m2, H)
                h = tl.load(_tile(h_now, srow, rows, j), mask=m2, other=0.0)
                if CELL == RNN_TANH or CELL == RNN_RELU:
                    a = _pre(0, step, REC, HOLD, BB, BJ, BK, PREC)
                    if CELL == RNN_TANH:
                        new = _tanh(a)
                    else:
                        new = _relu(a)
                elif CELL == LSTM:
                    i = _sigmoid(_pre(0, step, REC, HOLD, BB, BJ, BK, PREC))
                    f = _sigmoid(_pre(1, step, REC, HOLD, BB, BJ, BK, PREC))
                    g = _tanh(_pre(2, step, REC, HOLD, BB, BJ, BK, PREC))
                    o = _sigmoid(_pre(3, step, REC, HOLD, BB, BJ, BK, PREC))
                    c = tl.load(_tile(cs + t * H, srow, rows, j), mask=m2, other=0.0)
                    c_new = f * c + i * g
                    new = o * _tanh(c_new)
                    tl.store(_tile(a_t, xrow, rows, j), i, mask=m2)
                    tl.store(_tile(a_t + H, xrow, rows, j), f, mask=m2)
                    tl.store(_tile(a_t + 2 * H, xrow, rows, j), g, mask=m2)
                    tl.store(_tile(a_t + 3 * H, xrow, rows, j), o, mask=m2)
                    if HAS_LENGTHS:
                        c_new = tl.where(alive, c_new, c)
                    tl.store(_tile(cs + (t + 1) * H, srow, rows, j), c_new, mask=m2)
                elif CELL == GRU:
                    r = _sigmoid(_pre(0, step, REC, HOLD, BB, BJ, BK, PREC))
                    z = _sigmoid(_pre(1, step, REC, HOLD, BB, BJ, BK, PREC))
                    hn = tl.load(bn + j, mask=jmask, other=0.0)[None, :] + _rec(
                        2, 2, h_now, srow, w, held, rec, rec_row, rows, rmask, j, jmask, H, REC, HOLD, BB, BJ,
                        BK, PREC)
                    n = _tanh(tl.load(_tile(x_t + 2 * H, xrow, rows, j), mask=m2, other=0.0) + r * hn)
                    new = (1.0 - z) * n + z * h
                    tl.store(_tile(a_t, xrow, rows, j), r, mask=m2)
                    tl.store(_tile(a_t + H, xrow, rows, j), z, mask=m2)
                    tl.store(_tile(a_t + 2 * H, xrow, rows, j), n, mask=m2)
                    tl.store(_tile(aux_t, hrow, rows, j), hn, mask=m2)
                else:  # GRU_RESET_BEFORE: the n block, whose product reads r ⊙ h (its rec alone, in phase 2)
                    n = _tanh(tl.load(_tile(x_t + 2 * H, xrow, rows, j), mask=m2, other=0.0) + _rec(
                        2, 0, aux_t, hrow, w, held, rec, rec_row, rows, rmask, j, jmask, H, REC, HOLD, BB, BJ,
                        BK, PREC))
                    z = tl.load(_tile(a_t + H, xrow, rows, j), mask=m2, other=0.0)
                    new = (1.0 - z) * n + z * h
                    tl.store(_tile(a_t + 2 * H, xrow, rows, j), n, mask=m2)
                if HAS_LENGTHS:
                    new = tl.where(alive, new, h)
                tl.store(_tile(h_next, srow, rows, j), new, mask=m2)
            tl.debug_barrier()


@triton.jit
def backward_kernel(w, hs, cs, acts, aux, dy, dg, dr, dh, dc, rec, rec_row, lengths, B, T, H, s0, steps,
                    CELL: tl.constexpr, G: tl.constexpr, NK: tl.constexpr, HAS_LENGTHS: tl.constexpr,
                    REC: tl.constexpr, PHASE: tl.constexpr, HOLD: tl.constexpr,
                    BB: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """Steps s0 .. s0+steps-1 counted from the last (t = T-1-s). NK: the gate blocks whose product
    reads h (all G but the reset-before GRU's n block). PHASE: 0 the whole step; 1 the pointwise
    part; 2 the reset-before GRU's r gradient from rec = dG_n W_n (REC); the per-step caller adds
    the product with W_hh itself. HOLD: W_hh's blocks loaded once and held, as forward_kernel."""
    rows, rmask, length = _rows(lengths, B, BB, HAS_LENGTHS)
    if HOLD:
        held = _held(w, H, G, H, 1, BK, BJ)
    else:
        held = (0,)
    GH = G * H
    xrow, srow, hrow = T * GH, (T + 1) * H, T * H
    first, stride = tl.program_id(1) * BJ, tl.num_programs(1) * BJ
    for s in range(s0, s0 + steps):
        t = T - 1 - s
        now, before = dh + (s % 2) * B * H, dh + ((s + 1) % 2) * B * H  # h_{t+1}'s gradient, h_t's
        a_t, g_t, r_t, aux_t = acts + t * GH, dg + t * GH, dr + t * GH, aux + t * H
        if HAS_LENGTHS:
            alive = (t < length)[:, None]
        if PHASE != 2:  # the pointwise part: the pre-activations' gradients, h_t's but for the products
            for j0 in range(first, H, stride):
                j = j0 + tl.arange(0, BJ)
                jmask = j < H
                m2 = rmask[:, None] & jmask[None, :]
                carried = tl.load(_tile(now, H, rows, j), mask=m2, other=0.0)
                d = carried + tl.load(_tile(dy + t * H, hrow, rows, j), mask=m2, other=0.0)
                if HAS_LENGTHS:
                    d = tl.where(alive, d, 0.0)
                h = tl.load(_tile(hs + t * H, srow, rows, j), mask=m2, other=0.0)
                if CELL == RNN_TANH or CELL == RNN_RELU:
                    new = tl.load(_tile(hs + (t + 1) * H, srow, rows, j), mask=m2, other=0.0)
                    if CELL == RNN_TANH:
                        da = d * (1.0 - new * new)
                    else:
                        da = tl.where(new > 0, d, 0.0)
                    tl.store(_tile(g_t, xrow, rows, j), da, mask=m2)
                    direct = d * 0.0
                elif CELL == LSTM:
                    i = tl.load(_tile(a_t, xrow, rows, j), mask=m2, other=0.0)
                    f = tl.load(_tile(a_t + H, xrow, rows, j), mask=m2, other=0.0)
                    g = tl.load(_tile(a_t + 2 * H, xrow, rows, j), mask=m2, other=0.0)
                    o = tl.load(_tile(a_t + 3 * H, xrow, rows, j), mask=m2, other=0.0)
                    c = tl.load(_tile(cs + t * H, srow, rows, j), mask=m2, other=0.0)
                    tc = _tanh(tl.load(_tile(cs + (t + 1) * H, srow, rows, j), mask=m2, other=0.0))
                    dc_carried = tl.load(_tile(dc, H, rows, j), mask=m2, other=0.0)
                    dcn = dc_carried + d * o * (1.0 - tc * tc)
                    if HAS_LENGTHS:
                        dcn = tl.where(alive, dcn, 0.0)
                    tl.store(_tile(g_t, xrow, rows, j), dcn * g * i * (1.0 - i), mask=m2)
                    tl.store(_tile(g_t + H, xrow, rows, j), dcn * c * f * (1.0 - f), mask=m2)
                    tl.store(_tile(g_t + 2 * H, xrow, rows, j), dcn * i * (1.0 - g * g), mask=m2)
                    tl.store(_tile(g_t + 3 * H, xrow, rows, j), d * tc * o * (1.0 - o), mask=m2)
                    dc_before = dcn * f
                    if HAS_LENGTHS:
                        dc_before = tl.where(alive, dc_before, dc_carried)
                    tl.store(_tile(dc, H, rows, j), dc_before, mask=m2)
                    direct = d * 0.0
                else:  # GRU, either variant: h' = (1 - z) n + z h
                    z = tl.load(_tile(a_t + H, xrow, rows, j), mask=m2, other=0.0)
                    n = tl.load(_tile(a_t + 2 * H, xrow, rows, j), mask=m2, other=0.0)
                    dan = d * (1.0 - z) * (1.0 - n * n)
                    daz = d * (h - n) * z * (1.0 - z)
                    tl.store(_tile(g_t + H, xrow, rows, j), daz, mask=m2)
                    tl.store(_tile(g_t + 2 * H, xrow, rows, j), dan, mask=m2)
                    direct = d * z
                    if CELL == GRU:
                        r = tl.load(_tile(a_t, xrow, rows, j), mask=m2, other=0.0)
                        hn = tl.load(_tile(aux_t, hrow, rows, j), mask=m2, other=0.0)
                        dar = dan * hn * r * (1.0 - r)
                        tl.store(_tile(g_t, xrow, rows, j), dar, mask=m2)
                        tl.store(_tile(r_t, xrow, rows, j), dar, mask=m2)  # (dr: a tensor of its own here)
                        tl.store(_tile(r_t + H, xrow, rows, j), daz, mask=m2)
                        tl.store(_tile(r_t + 2 * H, xrow, rows, j), dan * r, mask=m2)
                if HAS_LENGTHS:
                    direct = tl.where(alive, direct, carried)
                tl.store(_tile(before, H, rows, j), direct, mask=m2)
            tl.debug_barrier()
        if CELL == GRU_RESET_BEFORE and PHASE != 1:  # r's gradient, through the n block's product of r ⊙ h
            for j0 in range(first, H, stride):
                j = j0 + tl.arange(0, BJ)
                jmask = j < H
                m2 = rmask[:, None] & jmask[None, :]
                if REC:
                    drh = tl.load(_tile(rec, rec_row, rows, j), mask=m2, other=0.0)
                else:
                    drh = _times(2, g_t + 2 * H, xrow, w, H, 1, held, rows, rmask, j, jmask, H, HOLD, BB, BJ, BK, PREC)
                r = tl.load(_tile(a_t, xrow, rows, j), mask=m2, other=0.0)
                h = tl.load(_tile(hs + t * H, srow, rows, j), mask=m2, other=0.0)
                tl.store(_tile(g_t, xrow, rows, j), drh * h * r * (1.0 - r), mask=m2)
                before_j = tl.load(_tile(before, H, rows, j), mask=m2, other=0.0)
                tl.store(_tile(before, H, rows, j), before_j + drh * r, mask=m2)
            tl.debug_barrier()
        if PHASE == 0:  # h_t's gradient through the products of h_t
            for j0 in range(first, H, stride):
                j = j0 + tl.arange(0, BJ)
                jmask = j < H
                m2 = rmask[:, None] & jmask[None, :]
                acc = tl.load(_tile(before, H, rows, j), mask=m2, other=0.0)
                for k in tl.static_range(NK):
                    acc += _times(k, r_t + k * H, xrow, w, H, 1, held, rows, rmask, j, jmask, H, HOLD, BB, BJ, BK, PREC)
                tl.store(_tile(before, H, rows, j), acc, mask=m2)
            tl.debug_barrier()
