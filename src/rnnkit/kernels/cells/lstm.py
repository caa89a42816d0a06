"""LSTM (rnnkit.cells.lstm): gate blocks i, f, g, o; states h, c; xp keeps the four activations and
acts tanh(c')."""

from __future__ import annotations

from ... import cells as reference
from ..ops import sigmoid, tanh
from . import Cell


def _forward(c, b, r, t, tx, ta, p, q, j0, j1, v, project):
    xg, rec, shared = c.xg, c.rec, c.shared
    for k in range(2):  # i, f
        for j in range(j0, j1):
            xg[b, tx, k, j] = sigmoid(xg[b, tx, k, j] + rec[r, k, j - j0])
    for j in range(j0, j1):  # g
        xg[b, tx, 2, j] = tanh(xg[b, tx, 2, j] + rec[r, 2, j - j0])
    for j in range(j0, j1):  # o
        xg[b, tx, 3, j] = sigmoid(xg[b, tx, 3, j] + rec[r, 3, j - j0])
    for j in range(j0, j1):
        shared[j] = xg[b, tx, 1, j] * c.cs[b, p, j] + xg[b, tx, 0, j] * xg[b, tx, 2, j]
    for j in range(j0, j1):
        c.cs[b, q, j] = shared[j]
        c.ag[b, ta, 0, j] = tanh(shared[j])
    for j in range(j0, j1):
        c.hs[b, q, j] = xg[b, tx, 3, j] * c.ag[b, ta, 0, j]


def _backward(c, b, t, p, q, j0, j1):
    one, zero = c.dh.dtype.type(1.0), c.dh.dtype.type(0.0)
    xg, dGg, dh, dc, shared = c.xg, c.dGg, c.dh, c.dc, c.shared
    for j in range(j0, j1):
        dh[b, j] += c.dy[b, t, j]
    for j in range(j0, j1):
        tc = c.ag[b, t, 0, j]
        shared[j] = dc[b, j] + dh[b, j] * xg[b, t, 3, j] * (one - tc * tc)
    for j in range(j0, j1):
        i = xg[b, t, 0, j]
        dGg[b, t, 0, j] = shared[j] * xg[b, t, 2, j] * i * (one - i)
    for j in range(j0, j1):
        f = xg[b, t, 1, j]
        dGg[b, t, 1, j] = shared[j] * c.cs[b, p, j] * f * (one - f)
    for j in range(j0, j1):
        g = xg[b, t, 2, j]
        dGg[b, t, 2, j] = shared[j] * xg[b, t, 0, j] * (one - g * g)
    for j in range(j0, j1):
        o = xg[b, t, 3, j]
        dGg[b, t, 3, j] = dh[b, j] * c.ag[b, t, 0, j] * o * (one - o)
    for j in range(j0, j1):
        dc[b, j] = shared[j] * xg[b, t, 1, j]
        dh[b, j] = zero


LSTM = Cell("lstm", 4, _forward, _backward, states=2, saved=1, sources=(__file__,),
            reference=lambda x, s, *w: reference.lstm(x, s, *w))
