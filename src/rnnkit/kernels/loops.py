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

import math

import numpy as np
from numba import njit

RNN_TANH, RNN_RELU, LSTM, GRU, GRU_RESET_BEFORE = range(5)

# Extra storage per time step, in units of H (see the module docstring).
ACTS = {RNN_TANH: 0, RNN_RELU: 0, LSTM: 5, GRU: 4, GRU_RESET_BEFORE: 4}


# exp(x) for x <= 0, written out so that LLVM vectorizes the gate loops (numba has no vector exp
# without Intel's SVML; measured 2.5x faster than libm's scalar exp in a loop): x = -m ln2 + r with
# |r| <= ln2/2, exp(r) by its degree-13 Taylor polynomial (truncation < 5e-18 relative), 2^-m from a
# table. Arguments below -60 are clamped: exp(-60) is 9e-27, far below any tolerance, and the clamp
# keeps m within the table (NaN too, which then comes back at the end).
_LOG2E = 1.4426950408889634
_LN2_HI = 0.693145751953125  # ln 2 split so that m * _LN2_HI is exact for m < 2^10
_LN2_LO = 1.4286068203094173e-06
_POW2_NEG = np.array([2.0 ** -m for m in range(88)])


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"}, inline="always")
def _exp_neg(x):
    xc = x if x > -60.0 else -60.0
    m = int(math.floor(0.5 - xc * _LOG2E))  # 0 <= m <= 87
    r = xc + m * _LN2_HI + m * _LN2_LO
    p = 1.0 / 6227020800.0  # 1/13!, then Horner down to 1/0!
    p = p * r + 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    return p * _POW2_NEG[m] if x == x else x


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"}, inline="always")
def _sigmoid(a):
    e = _exp_neg(-abs(a))
    d = 1.0 / (1.0 + e)
    return d if a >= 0 else e * d


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"}, inline="always")
def _tanh(a):
    e = _exp_neg(-2.0 * abs(a))
    v = (1.0 - e) / (1.0 + e)
    return v if a >= 0 else -v


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def forward(kind, xp, hs, cs, acts, W_hh, b_hh, lengths, reverse, store):
    """Run the recurrence over all T steps, filling hs, cs and (when store) acts in place.

    xp (T, B, G*H) input pre-activations incl. b_ih; W_hh (G*H, H); b_hh (G*H,), zeros when absent;
    lengths (B,) int64. With store False (no gradient wanted) acts is (1, B, A) scratch.
    """
    T, B, _ = xp.shape
    H = hs.shape[2]
    # GRU with the reset gate before the matrix multiplies r ⊙ h by W_hn, so only r, z rows go first.
    W_rec = W_hh[: 2 * H] if kind == GRU_RESET_BEFORE else W_hh
    W_n = W_hh[2 * H:]
    rec = np.empty((B, W_rec.shape[0]), xp.dtype)  # (B, G*H) h W_hh^T
    rh = np.zeros((B, H), xp.dtype)  # (B, H) r ⊙ h, then reused for (r ⊙ h) W_hn^T
    hn = np.empty((B, H), xp.dtype)
    for step in range(T):
        t = T - 1 - step if reverse else step
        p, q = (t + 1, t) if reverse else (t, t + 1)
        x, hp, hq, a = xp[t], hs[p], hs[q], acts[t if store else 0]
        np.dot(hp, W_rec.T, rec)
        for b in range(B):
            if lengths[b] <= t:
                hq[b] = hp[b]
                if kind == LSTM:
                    cs[q, b] = cs[p, b]
                a[b] = 0.0
                rh[b] = 0.0
                continue
            # One activation per loop, kind tested outside them: each loop vectorizes.
            xb, rb, ab, hpb, hqb = x[b], rec[b], a[b], hp[b], hq[b]
            if kind == RNN_TANH:
                for j in range(H):
                    hqb[j] = _tanh(xb[j] + rb[j] + b_hh[j])
            elif kind == RNN_RELU:
                for j in range(H):
                    hqb[j] = max(xb[j] + rb[j] + b_hh[j], 0.0)
            elif kind == LSTM:
                cp, cq = cs[p, b], cs[q, b]
                for k in range(2 * H):  # i, f
                    ab[k] = _sigmoid(xb[k] + rb[k] + b_hh[k])
                for k in range(2 * H, 3 * H):  # g
                    ab[k] = _tanh(xb[k] + rb[k] + b_hh[k])
                for k in range(3 * H, 4 * H):  # o
                    ab[k] = _sigmoid(xb[k] + rb[k] + b_hh[k])
                for j in range(H):
                    cq[j] = ab[H + j] * cp[j] + ab[j] * ab[2 * H + j]
                for j in range(H):
                    ab[4 * H + j] = _tanh(cq[j])
                for j in range(H):
                    hqb[j] = ab[3 * H + j] * ab[4 * H + j]
            else:
                for k in range(2 * H):  # r, z
                    ab[k] = _sigmoid(xb[k] + rb[k] + b_hh[k])
                if kind == GRU:
                    for j in range(H):
                        ab[3 * H + j] = rb[2 * H + j] + b_hh[2 * H + j]
                    for j in range(H):
                        ab[2 * H + j] = _tanh(xb[2 * H + j] + ab[j] * ab[3 * H + j])
                    for j in range(H):
                        hqb[j] = (1.0 - ab[H + j]) * ab[2 * H + j] + ab[H + j] * hpb[j]
                else:
                    for j in range(H):
                        rh[b, j] = ab[j] * hpb[j]
                        ab[3 * H + j] = rh[b, j]
        if kind == GRU_RESET_BEFORE:
            np.dot(rh, W_n.T, hn)
            for b in range(B):
                if lengths[b] > t:
                    xb, ab, hpb, hqb, hnb = x[b], a[b], hp[b], hq[b], hn[b]
                    for j in range(H):
                        ab[2 * H + j] = _tanh(xb[2 * H + j] + hnb[j] + b_hh[2 * H + j])
                    for j in range(H):
                        hqb[j] = (1.0 - ab[H + j]) * ab[2 * H + j] + ab[H + j] * hpb[j]


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
    for step in range(T):
        t = step if reverse else T - 1 - step
        p, q = (t + 1, t) if reverse else (t, t + 1)
        g, a, hp, hq = dG[t], acts[t], hs[p], hs[q]
        for b in range(B):
            if lengths[b] <= t:
                g[b] = 0.0
                grec[b] = 0.0
                dan[b] = 0.0
                continue
            for j in range(H):
                d = dh[b, j] + dy[t, b, j]  # gradient of this step's h
                if kind == RNN_TANH:
                    g[b, j] = d * (1.0 - hq[b, j] * hq[b, j])
                    dh[b, j] = 0.0
                elif kind == RNN_RELU:
                    g[b, j] = d if hq[b, j] > 0.0 else 0.0
                    dh[b, j] = 0.0
                elif kind == LSTM:
                    i, f, gg, o, tc = a[b, j], a[b, H + j], a[b, 2 * H + j], a[b, 3 * H + j], a[b, 4 * H + j]
                    dcv = dc[b, j] + d * o * (1.0 - tc * tc)
                    g[b, j] = dcv * gg * i * (1.0 - i)
                    g[b, H + j] = dcv * cs[p, b, j] * f * (1.0 - f)
                    g[b, 2 * H + j] = dcv * i * (1.0 - gg * gg)
                    g[b, 3 * H + j] = d * tc * o * (1.0 - o)
                    dc[b, j] = dcv * f
                    dh[b, j] = 0.0
                else:
                    r, z, n = a[b, j], a[b, H + j], a[b, 2 * H + j]
                    dn = d * (1.0 - z) * (1.0 - n * n)
                    gz = d * (hp[b, j] - n) * z * (1.0 - z)
                    g[b, H + j] = gz
                    grec[b, H + j] = gz
                    g[b, 2 * H + j] = dn
                    dh[b, j] = d * z
                    if kind == GRU:
                        gr = dn * a[b, 3 * H + j] * r * (1.0 - r)
                        g[b, j] = gr
                        grec[b, j] = gr
                        grec[b, 2 * H + j] = dn * r
                    else:
                        dan[b, j] = dn
        if kind == GRU_RESET_BEFORE:
            np.dot(dan, W_n, drh)  # gradient of r ⊙ h
            for b in range(B):
                if lengths[b] > t:
                    for j in range(H):
                        r = a[b, j]
                        gr = drh[b, j] * hp[b, j] * r * (1.0 - r)
                        g[b, j] = gr
                        grec[b, j] = gr
                        dh[b, j] += drh[b, j] * r
        np.dot(g if kind <= LSTM else grec, W_rec, back)
        dh += back
