"""The Elman cell: h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu (rnnkit.cells.elman).

It keeps nothing in xp: its backward reads the derivative from h' itself (1 - h'^2 for tanh, h' > 0
for relu).
"""

from __future__ import annotations

from ... import cells as reference
from ..ops import relu, tanh
from . import Cell


def _forward_tanh(c, b, r, t, tx, ta, p, q, j0, j1, v, project):
    if project:
        for j in range(j0, j1):
            c.hs[b, q, j] = tanh(c.proj[0, 0, j] + v * c.proj[1, 0, j] + c.rec[r, 0, j - j0])
    else:
        for j in range(j0, j1):
            c.hs[b, q, j] = tanh(c.xg[b, tx, 0, j] + c.rec[r, 0, j - j0])


def _forward_relu(c, b, r, t, tx, ta, p, q, j0, j1, v, project):
    if project:
        for j in range(j0, j1):
            c.hs[b, q, j] = relu(c.proj[0, 0, j] + v * c.proj[1, 0, j] + c.rec[r, 0, j - j0])
    else:
        for j in range(j0, j1):
            c.hs[b, q, j] = relu(c.xg[b, tx, 0, j] + c.rec[r, 0, j - j0])


def _backward_tanh(c, b, t, p, q, j0, j1):
    one, zero = c.dh.dtype.type(1.0), c.dh.dtype.type(0.0)
    # h's gradient is dh + dy; h_prev's is left to the next phase's product.
    for j in range(j0, j1):
        c.dGg[b, t, 0, j] = (c.dh[b, j] + c.dy[b, t, j]) * (one - c.hs[b, q, j] * c.hs[b, q, j])
        c.dh[b, j] = zero


def _backward_relu(c, b, t, p, q, j0, j1):
    zero = c.dh.dtype.type(0.0)
    for j in range(j0, j1):
        c.dGg[b, t, 0, j] = c.dh[b, j] + c.dy[b, t, j] if c.hs[b, q, j] > zero else zero
        c.dh[b, j] = zero


RNN_TANH = Cell("rnn_tanh", 1, _forward_tanh, _backward_tanh, keeps_pre=False, sources=(__file__,),
                reference=lambda x, s, *w: (reference.elman(x, s[0], *w, nonlinearity="tanh"),))
RNN_RELU = Cell("rnn_relu", 1, _forward_relu, _backward_relu, keeps_pre=False, sources=(__file__,),
                reference=lambda x, s, *w: (reference.elman(x, s[0], *w, nonlinearity="relu"),))
