"""IndRNN (Li et al. 2018; rnnkit.cells.indrnn): h' = relu(W_ih x + b_ih + u ⊙ h + b_hh), each unit
its own recurrent weight u (the layer's ``weight_hh``, (H,)) instead of a matrix. Written as per-unit
math (cells.pointwise), with no W_hh product in its loop."""

from __future__ import annotations

from ... import cells as reference
from .pointwise import pointwise


def _forward(pre, prev, prm):
    a = pre[0] + prm[0] * prev[0]
    zero = type(a)(0.0)
    return (a if a > zero else zero,), (a,)


def _backward(keep, prev, new, prm, d_new):
    a = keep[0]
    zero = type(a)(0.0)
    da = d_new[0] if a > zero else zero
    return (da,), (da * prm[0],), (da * prev[0],)


INDRNN = pointwise("indrnn", 1, _forward, _backward, params=("weight_hh",), recurrent=False, sources=(__file__,),
                   reference=lambda x, s, *w: (reference.indrnn(x, s[0], *w),))
