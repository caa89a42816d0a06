"""GRU (rnnkit.cells.gru): gate blocks r, z, n; xp keeps the three activations.

With the reset gate after the product (torch.nn's), n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)):
the n block's product and b_hn stay apart from the input's (``apart``), acts keeps W_hn h + b_hn, and
grec (the recurrent product's gradient) differs from dG in the n block, by the factor r. With it
before (Cho et al., the seed's), n = tanh(W_in x + b_in + W_hn (r ⊙ h) + b_hn): the n block's product
reads r ⊙ h (acts) in a second phase of the step, after r (``second``).
"""

from __future__ import annotations

from ... import cells as reference
from ..ops import sigmoid, tanh
from . import Cell


def _forward(c, b, r, t, tx, ta, p, q, j0, j1, v, project):
    one = c.hs.dtype.type(1.0)
    xg, shared = c.xg, c.shared
    for k in range(2):  # r, z
        for j in range(j0, j1):
            xg[b, tx, k, j] = sigmoid(xg[b, tx, k, j] + c.rec[r, k, j - j0])
    for j in range(j0, j1):
        c.ag[b, ta, 0, j] = c.rec[r, 2, j - j0] + c.bg[2, j]
    for j in range(j0, j1):
        shared[j] = xg[b, tx, 0, j] * c.ag[b, ta, 0, j]  # r ⊙ (W_hn h + b_hn)
    for j in range(j0, j1):
        xg[b, tx, 2, j] = tanh(xg[b, tx, 2, j] + shared[j])
    for j in range(j0, j1):
        shared[j] = (one - xg[b, tx, 1, j]) * xg[b, tx, 2, j] + xg[b, tx, 1, j] * c.hs[b, p, j]
    for j in range(j0, j1):
        c.hs[b, q, j] = shared[j]


def _forward_reset_before(c, b, r, t, tx, ta, p, q, j0, j1, v, project):
    xg = c.xg
    for k in range(2):  # r, z
        for j in range(j0, j1):
            xg[b, tx, k, j] = sigmoid(xg[b, tx, k, j] + c.rec[r, k, j - j0])
    for j in range(j0, j1):
        c.ag[b, ta, 0, j] = xg[b, tx, 0, j] * c.hs[b, p, j]  # r ⊙ h


def _forward_second(c, b, t, tx, p, q, j0, j1):
    """(xp's n block holds W_in x + b_in + W_hn (r ⊙ h) + b_hn now)"""
    one = c.hs.dtype.type(1.0)
    for j in range(j0, j1):
        c.xg[b, tx, 2, j] = tanh(c.xg[b, tx, 2, j])
    for j in range(j0, j1):
        c.shared[j] = (one - c.xg[b, tx, 1, j]) * c.xg[b, tx, 2, j] + c.xg[b, tx, 1, j] * c.hs[b, p, j]
    for j in range(j0, j1):
        c.hs[b, q, j] = c.shared[j]


def _backward_for(reset_after: bool):
    """The backward of either variant (``reset_after`` a constant of the compiled code)."""

    def backward(c, b, t, p, q, j0, j1):
        one = c.dh.dtype.type(1.0)
        xg, dGg, dh, shared = c.xg, c.dGg, c.dh, c.shared
        for j in range(j0, j1):
            dh[b, j] += c.dy[b, t, j]
        for j in range(j0, j1):
            n = xg[b, t, 2, j]
            shared[j] = dh[b, j] * (one - xg[b, t, 1, j]) * (one - n * n)
        for j in range(j0, j1):
            z = xg[b, t, 1, j]
            gz = dh[b, j] * (c.hs[b, p, j] - xg[b, t, 2, j]) * z * (one - z)
            dGg[b, t, 1, j] = gz
        for j in range(j0, j1):
            dGg[b, t, 2, j] = shared[j]
        if reset_after:
            for j in range(j0, j1):
                rr = xg[b, t, 0, j]
                gr = shared[j] * c.ag[b, t, 0, j] * rr * (one - rr)
                dGg[b, t, 0, j] = gr
                c.grecg[b, t, 0, j] = gr
            for j in range(j0, j1):
                c.grecg[b, t, 1, j] = dGg[b, t, 1, j]
                c.grecg[b, t, 2, j] = shared[j] * xg[b, t, 0, j]
        else:  # (r's gradient comes in the second part, from dan W_hn)
            for j in range(j0, j1):
                c.dan[b, j] = shared[j]
        for j in range(j0, j1):
            dh[b, j] *= xg[b, t, 1, j]  # through h = (1 - z) n + z h_prev

    return backward


def _backward_second(c, b, t, p, j0, j1):
    """r's gradient and h's through r ⊙ h, from drh = dan W_hn."""
    one = c.dh.dtype.type(1.0)
    for j in range(j0, j1):
        rr = c.xg[b, t, 0, j]
        gr = c.drh[b, j] * c.hs[b, p, j] * rr * (one - rr)
        c.dGg[b, t, 0, j] = gr
        c.dh[b, j] += c.drh[b, j] * rr


GRU = Cell("gru", 3, _forward, _backward_for(True), saved=1, apart=(2,), sources=(__file__,),
           reference=lambda x, s, *w: (reference.gru(x, s[0], *w, reset_after=True),))
GRU_RESET_BEFORE = Cell("gru_reset_before", 3, _forward_reset_before, _backward_for(False), saved=1,
                        second=(_forward_second, _backward_second), sources=(__file__,),
                        reference=lambda x, s, *w: (reference.gru(x, s[0], *w, reset_after=False),))
