"""The compiled time loops of the fused engine: forward and hand-written BPTT for every cell.

Everything here is time-major and works on numpy views of torch tensors. The input projection
``xp = x W_ih^T + b_ih`` of all steps is one GEMM done by the caller before the loop, and the weight
gradients are GEMMs the caller does after it over the stored states and pre-activation gradients
``dG``; what is left inside the loop is one small BLAS call per step (``h W_hh^T``, or ``dG W_hh`` going
back; two for GRU with the reset gate before the matrix) and the gates, computed in place in
preallocated buffers. numba compiles the loop once per dtype (``kind``, ``reverse`` and ``store`` are
runtime values) and caches it on disk, so the loop pays no Python or dispatcher cost per step.

Storage, all indexed by time t (not by loop step), for a layer of hidden size H and G gate blocks:

* ``hs`` (T+1, B, H): hidden states on the boundaries between steps. The forward direction reads
  hs[t] and writes hs[t+1]; the reverse direction reads hs[t+1] and writes hs[t]. The initial state
  is therefore hs[0] (forward) or hs[T] (reverse), and the outputs are hs[1:] or hs[:-1].
* ``cs`` (T+1, B, H): the LSTM cell states, the same way; (0, B, H) for the other cells.
* ``acts`` (T, B, A): what the backward pass needs besides the states: LSTM i, f, g, o, tanh(c)
  (A = 5H); GRU r, z, n and W_hn h + b_hn (reset after) or r ⊙ h (reset before) (A = 4H);
  nothing for the Elman cell (A = 0), whose derivative comes from h itself.
* ``dG`` (T, B, G*H): the gradient of the loss with respect to the input pre-activation xp.

A sequence b is alive at time t when ``lengths[b] > t``; a dead row keeps its state, stores zero
activations (so the caller's GEMMs over them add exact zeros) and passes its gradient through.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit
from numba.extending import intrinsic

RNN_TANH, RNN_RELU, LSTM, GRU, GRU_RESET_BEFORE = range(5)

# Extra storage per time step, in units of H (see the module docstring).
ACTS = {RNN_TANH: 0, RNN_RELU: 0, LSTM: 5, GRU: 4, GRU_RESET_BEFORE: 4}


# exp(x) for x <= 0, written out so that LLVM vectorizes the gate loops (numba has no vector exp
# without Intel's SVML; measured 2.5x faster than libm's scalar exp in a loop): x = -m ln2 + r with
# |r| <= ln2/2, exp(r) by its degree-13 Taylor polynomial (truncation < 5e-18 relative), 2^-m built
# from its exponent bits. Arguments below -60 are clamped: exp(-60) is 9e-27, far below any tolerance,
# and the clamp keeps 2^-m a normal number in float32 (NaN too, which then comes back at the end).
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


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"}, inline="always")
def _exp_neg(x):
    F = type(x)
    xc = x if x > F(-60.0) else F(-60.0)
    m = np.floor(F(0.5) - xc * F(_LOG2E))  # 0 <= m <= 87, in type F (math.floor gives an int)
    r = xc + m * F(_LN2_HI) + m * F(_LN2_LO)
    p = F(1.0 / 6227020800.0)  # 1/13!, then Horner down to 1/0!
    p = p * r + F(1.0 / 479001600.0)
    p = p * r + F(1.0 / 39916800.0)
    p = p * r + F(1.0 / 3628800.0)
    p = p * r + F(1.0 / 362880.0)
    p = p * r + F(1.0 / 40320.0)
    p = p * r + F(1.0 / 5040.0)
    p = p * r + F(1.0 / 720.0)
    p = p * r + F(1.0 / 120.0)
    p = p * r + F(1.0 / 24.0)
    p = p * r + F(1.0 / 6.0)
    p = p * r + F(0.5)
    p = p * r + F(1.0)
    p = p * r + F(1.0)
    return p * _pow2_neg(m) if x == x else x


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


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def forward(kind, xp, hs, cs, acts, W_hh, b_hh, lengths, reverse, store):
    """Run the recurrence over all T steps, filling hs, cs and (when store) acts in place.

    xp (T, B, G*H) input pre-activations incl. b_ih; W_hh (G*H, H); b_hh (G*H,), zeros when absent;
    lengths (B,) int64. With store False (no gradient wanted) acts is (1, B, A) scratch.
    """
    T, B, GH = xp.shape
    H = hs.shape[2]
    # GRU with the reset gate before the matrix multiplies r ⊙ h by W_hn, so only r, z rows go first.
    W_rec = W_hh[: 2 * H] if kind == GRU_RESET_BEFORE else W_hh
    W_n = W_hh[2 * H:]
    rec = np.empty((B, W_rec.shape[0]), xp.dtype)  # (B, G*H) h W_hh^T
    # (B, H) r ⊙ h, then (r ⊙ h) W_hn^T into hn (reset before); r ⊙ (W_hn h + b_hn) (reset after)
    rh = np.zeros((B, H), xp.dtype)
    hn = np.empty((B, H), xp.dtype)
    one, zero = xp.dtype.type(1.0), xp.dtype.type(0.0)  # typed constants, see _exp_neg
    # Gate-block views: gate k's element j is [.., k, j] with j from range(H), which LLVM knows is
    # >= 0. Written [.., k * H + j] it may be negative as far as LLVM knows, and numba's wraparound
    # of negative indices then turns every vector load into a gather (measured 2x slower loops).
    xg = xp.reshape(T, B, GH // H, H)  # (T, B, G, H)
    recg = rec.reshape(B, W_rec.shape[0] // H, H)  # (B, G, H)
    bg = b_hh.reshape(GH // H, H)  # (G, H)
    ag = acts.reshape(acts.shape[0], B, acts.shape[2] // H, H)  # (T, B, A/H, H)
    for step in range(T):
        t = T - 1 - step if reverse else step
        p, q = (t + 1, t) if reverse else (t, t + 1)
        x, hp, hq, a = xg[t], hs[p], hs[q], ag[t if store else 0]
        np.dot(hp, W_rec.T, rec)
        for b in range(B):
            if lengths[b] <= t:
                hq[b] = hp[b]
                if kind == LSTM:
                    cs[q, b] = cs[p, b]
                a[b] = 0.0
                rh[b] = 0.0
                continue
            # One activation per loop, kind tested outside them: each loop vectorizes. Plain indexing,
            # no per-row views: making them cost more than a row's work at small H (measured).
            if kind == RNN_TANH:
                for j in range(H):
                    hq[b, j] = _tanh(x[b, 0, j] + recg[b, 0, j] + bg[0, j])
            elif kind == RNN_RELU:
                for j in range(H):
                    hq[b, j] = max(x[b, 0, j] + recg[b, 0, j] + bg[0, j], zero)
            elif kind == LSTM:
                for k in range(2):  # i, f
                    for j in range(H):
                        a[b, k, j] = _sigmoid(x[b, k, j] + recg[b, k, j] + bg[k, j])
                for j in range(H):  # g
                    a[b, 2, j] = _tanh(x[b, 2, j] + recg[b, 2, j] + bg[2, j])
                for j in range(H):  # o
                    a[b, 3, j] = _sigmoid(x[b, 3, j] + recg[b, 3, j] + bg[3, j])
                for j in range(H):
                    cs[q, b, j] = a[b, 1, j] * cs[p, b, j] + a[b, 0, j] * a[b, 2, j]
                for j in range(H):
                    a[b, 4, j] = _tanh(cs[q, b, j])
                for j in range(H):
                    hq[b, j] = a[b, 3, j] * a[b, 4, j]
            else:
                for k in range(2):  # r, z
                    for j in range(H):
                        a[b, k, j] = _sigmoid(x[b, k, j] + recg[b, k, j] + bg[k, j])
                if kind == GRU:
                    for j in range(H):
                        a[b, 3, j] = recg[b, 2, j] + bg[2, j]
                    # r ⊙ (W_hn h + b_hn) goes through rh, not straight into the tanh: a loop that
                    # stores into one row of acts and loads from others of it does not vectorize
                    # (LLVM cannot tell the rows apart; measured 2.3x slower).
                    for j in range(H):
                        rh[b, j] = a[b, 0, j] * a[b, 3, j]
                    for j in range(H):
                        a[b, 2, j] = _tanh(x[b, 2, j] + rh[b, j])
                    for j in range(H):
                        hq[b, j] = (one - a[b, 1, j]) * a[b, 2, j] + a[b, 1, j] * hp[b, j]
                else:
                    for j in range(H):
                        rh[b, j] = a[b, 0, j] * hp[b, j]
                        a[b, 3, j] = rh[b, j]
        if kind == GRU_RESET_BEFORE:
            np.dot(rh, W_n.T, hn)
            for b in range(B):
                if lengths[b] > t:
                    for j in range(H):
                        a[b, 2, j] = _tanh(x[b, 2, j] + hn[b, j] + bg[2, j])
                    for j in range(H):
                        hq[b, j] = (one - a[b, 1, j]) * a[b, 2, j] + a[b, 1, j] * hp[b, j]


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def backward(kind, dy, dh, dc, hs, cs, acts, W_hh, lengths, reverse, dG):
    """BPTT: fill dG (T, B, G*H) and turn dh, dc (B, H) from the final-state gradients into the
    initial-state gradients, in place. dy (T, B, H) is the gradient of the outputs."""
    T, B, GH = dG.shape
    H = hs.shape[2]
    W_rec = W_hh[: 2 * H] if kind == GRU_RESET_BEFORE else W_hh
    W_n = W_hh[2 * H:]
    # Gradient of the recurrent pre-activation h W_rec^T: dG itself for Elman and LSTM; for GRU its
    # n block differs from dG's (reset after: times r) or is not there (reset before).
    grec = np.zeros((B, W_rec.shape[0]), dG.dtype)
    dan = np.zeros((B, H), dG.dtype)  # GRU reset before: gradient of the n pre-activation
    drh = np.empty((B, H), dG.dtype)
    back = np.empty((B, H), dG.dtype)
    # Per-row scratch, its own allocation: a loop that stores into one row of an array and touches
    # another row of it stays scalar (see forward), so terms shared by several gate rows go through it.
    shared = np.empty(H, dG.dtype)  # LSTM: the gradient of this step's c; GRU: of n's pre-activation
    one, zero = dG.dtype.type(1.0), dG.dtype.type(0.0)  # typed constants, see _exp_neg
    # Gate-block views, for vector loads instead of gathers (see forward).
    dGg = dG.reshape(T, B, GH // H, H)  # (T, B, G, H)
    grecg = grec.reshape(B, W_rec.shape[0] // H, H)  # (B, G, H)
    ag = acts.reshape(T, B, acts.shape[2] // H, H)  # (T, B, A/H, H)
    for step in range(T):
        t = step if reverse else T - 1 - step
        p, q = (t + 1, t) if reverse else (t, t + 1)
        g, a, hp, hq = dGg[t], ag[t], hs[p], hs[q]
        for b in range(B):
            if lengths[b] <= t:
                g[b] = 0.0
                grec[b] = 0.0
                dan[b] = 0.0
                continue
            # h's gradient is dh + dy; Elman and LSTM leave h_prev's to back, below. No per-row views or
            # slice assignments (dh[b] = 0): at small H they cost more than the row's work (measured).
            if kind == RNN_TANH:
                for j in range(H):
                    g[b, 0, j] = (dh[b, j] + dy[t, b, j]) * (one - hq[b, j] * hq[b, j])
                    dh[b, j] = zero
                continue
            if kind == RNN_RELU:
                for j in range(H):
                    g[b, 0, j] = dh[b, j] + dy[t, b, j] if hq[b, j] > zero else zero
                    dh[b, j] = zero
                continue
            for j in range(H):
                dh[b, j] += dy[t, b, j]
            if kind == LSTM:  # acts rows: i, f, g, o, tanh(c)
                dcv = shared
                for j in range(H):
                    dcv[j] = dc[b, j] + dh[b, j] * a[b, 3, j] * (one - a[b, 4, j] * a[b, 4, j])
                for j in range(H):
                    g[b, 0, j] = dcv[j] * a[b, 2, j] * a[b, 0, j] * (one - a[b, 0, j])
                for j in range(H):
                    g[b, 1, j] = dcv[j] * cs[p, b, j] * a[b, 1, j] * (one - a[b, 1, j])
                for j in range(H):
                    g[b, 2, j] = dcv[j] * a[b, 0, j] * (one - a[b, 2, j] * a[b, 2, j])
                for j in range(H):
                    g[b, 3, j] = dh[b, j] * a[b, 4, j] * a[b, 3, j] * (one - a[b, 3, j])
                for j in range(H):
                    dc[b, j] = dcv[j] * a[b, 1, j]
                    dh[b, j] = zero
            else:  # acts rows: r, z, n, then W_hn h + b_hn (reset after) or r ⊙ h (reset before)
                dn = shared
                for j in range(H):
                    dn[j] = dh[b, j] * (one - a[b, 1, j]) * (one - a[b, 2, j] * a[b, 2, j])
                for j in range(H):
                    gz = dh[b, j] * (hp[b, j] - a[b, 2, j]) * a[b, 1, j] * (one - a[b, 1, j])
                    g[b, 1, j] = gz
                    grecg[b, 1, j] = gz
                for j in range(H):
                    g[b, 2, j] = dn[j]
                if kind == GRU:
                    for j in range(H):
                        gr = dn[j] * a[b, 3, j] * a[b, 0, j] * (one - a[b, 0, j])
                        g[b, 0, j] = gr
                        grecg[b, 0, j] = gr
                    for j in range(H):
                        grecg[b, 2, j] = dn[j] * a[b, 0, j]
                else:
                    for j in range(H):
                        dan[b, j] = dn[j]
                for j in range(H):
                    dh[b, j] *= a[b, 1, j]  # through h = (1 - z) n + z h_prev
        if kind == GRU_RESET_BEFORE:
            np.dot(dan, W_n, drh)  # gradient of r ⊙ h
            for b in range(B):
                if lengths[b] > t:
                    for j in range(H):
                        r = a[b, 0, j]
                        grv = drh[b, j] * hp[b, j] * r * (one - r)
                        g[b, 0, j] = grv
                        grecg[b, 0, j] = grv
                        dh[b, j] += drh[b, j] * r
        np.dot(dG[t] if kind <= LSTM else grec, W_rec, back)
        dh += back
