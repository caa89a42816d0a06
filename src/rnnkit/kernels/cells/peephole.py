"""The peephole LSTM (Gers & Schmidhuber 2000; rnnkit.cells.peephole_lstm): LSTM whose gates also see
the cell state through unit weights, i and f the previous c, o the new one. Written as per-unit math
(cells.pointwise): torch.nn has no such layer, and it shows the path a user's cell takes."""

from __future__ import annotations

from ... import cells as reference
from ..ops import sigmoid, tanh
from .pointwise import pointwise


def _forward(pre, prev, prm):
    ai, af, ag, ao = pre
    h, c = prev
    w_ci, w_cf, w_co = prm
    i = sigmoid(ai + w_ci * c)
    f = sigmoid(af + w_cf * c)
    g = tanh(ag)
    c2 = f * c + i * g
    o = sigmoid(ao + w_co * c2)
    tc = tanh(c2)
    return (o * tc, c2), (i, f, g, o, tc)


def _backward(keep, prev, new, prm, d_new):
    i, f, g, o, tc = keep
    h, c = prev
    c2 = new[1]
    w_ci, w_cf, w_co = prm
    dh, dc = d_new
    one = type(dh)(1.0)
    dao = dh * tc * o * (one - o)
    dc2 = dc + dh * o * (one - tc * tc) + dao * w_co
    dai = dc2 * g * i * (one - i)
    daf = dc2 * c * f * (one - f)
    dag = dc2 * i * (one - g * g)
    dc_prev = dc2 * f + dai * w_ci + daf * w_cf
    return (dai, daf, dag, dao), (type(dh)(0.0), dc_prev), (dai * c, daf * c, dao * c2)


PEEPHOLE_LSTM = pointwise("peephole_lstm", 4, _forward, _backward, states=2, saved=1,
                          params=("weight_ci", "weight_cf", "weight_co"), sources=(__file__,),
                          reference=lambda x, s, *w: reference.peephole_lstm(x, s, *w))
