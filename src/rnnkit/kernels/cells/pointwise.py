"""A cell from its per-unit math: :func:`pointwise` writes the row functions (see
:mod:`rnnkit.kernels.cells`) around two scalar functions.

``forward(pre, prev, prm) -> (new, keep)``: ``pre`` the G pre-activations of one unit
(``W_ih x + b_ih + W_hh h + b_hh``, block by block; without the W_hh term for a cell with
``recurrent=False``), ``prev`` its S states (h first), ``prm`` its unit parameters; returns its new
states and the G + ``saved`` values its backward reads (``keep``).

``backward(keep, prev, new, prm, d_new) -> (d_pre, d_prev, d_prm)``: from those, the gradients of
the new states (``d_new``: h's, the later steps' and the output's, then c's), the gradients of the
pre-activations, of the previous states (for h without the term through W_hh, which the loop adds)
and of the unit parameters.

Both are compiled for the fused engine (numba, nopython: tuples and floats; :mod:`rnnkit.kernels.ops`
for sigmoid, tanh, relu; a constant in the data's dtype as ``type(x)(1.0)``, else float32 math runs
in float64). The forward runs on tensors too, which gives the cell a reference step when none is
given: the reference loop then runs the very same equations through torch's autograd, the oracle
its hand-written backward is held to.
"""

from __future__ import annotations

from typing import Callable

import torch.nn.functional as F

from . import Cell


def _tuple(items: list) -> str:
    return "(" + "".join(f"{i}, " for i in items) + ")"


def pointwise(name: str, gates: int, forward: Callable, backward: Callable, *, states: int = 1, saved: int = 0,
              params: tuple = (), recurrent: bool = True, reference: Callable | None = None,
              sources: tuple = ()) -> Cell:
    """A :class:`Cell` from per-unit ``forward`` and ``backward`` (see the module docstring);
    ``reference`` the reference step, by default ``forward`` on tensors."""
    G, S, P, A = gates, states, len(params), saved
    state = ["c.hs[b, {t}, j]", "c.cs[b, {t}, j]"][:S]
    prm = _tuple([f"c.prm[{i}, j]" for i in range(P)])
    rec = " + c.rec[r, {k}, j - j0]" if recurrent else ""
    fwd = [
        "def forward(c, b, r, t, tx, ta, p, q, j0, j1, v, project):",
        "    for j in range(j0, j1):",
        "        pre = " + _tuple([f"c.xg[b, tx, {k}, j]" + rec.format(k=k) for k in range(G)]),
        "        prev = " + _tuple([s.format(t="p") for s in state]),
        f"        new, keep = _forward(pre, prev, {prm})",
        *[f"        {s.format(t='q')} = new[{i}]" for i, s in enumerate(state)],
        *[f"        c.xg[b, tx, {k}, j] = keep[{k}]" for k in range(G)],
        *[f"        c.ag[b, ta, {a}, j] = keep[{G + a}]" for a in range(A)],
    ]
    bwd = [
        "def backward(c, b, t, p, q, j0, j1):",
        "    for j in range(j0, j1):",
        "        keep = " + _tuple([f"c.xg[b, t, {k}, j]" for k in range(G)] + [f"c.ag[b, t, {a}, j]" for a in range(A)]),
        "        prev = " + _tuple([s.format(t="p") for s in state]),
        "        new = " + _tuple([s.format(t="q") for s in state]),
        "        d_new = " + _tuple(["c.dh[b, j] + c.dy[b, t, j]", "c.dc[b, j]"][:S]),
        f"        d_pre, d_prev, d_prm = _backward(keep, prev, new, {prm}, d_new)",
        *[f"        c.dGg[b, t, {k}, j] = d_pre[{k}]" for k in range(G)],
        *[f"        {d}[b, j] = d_prev[{i}]" for i, d in enumerate(["c.dh", "c.dc"][:S])],
        *[f"        c.psum[{i}, j] += d_prm[{i}]" for i in range(P)],
    ]
    scope = {"_forward": forward, "_backward": backward}
    exec("\n".join(fwd) + "\n\n" + "\n".join(bwd), scope)  # noqa: S102 - source made here

    def reference_step(x, state, W_ih, W_hh, b_ih, b_hh, *unit):
        pre = F.linear(x, W_ih, b_ih)
        if recurrent:
            pre = pre + F.linear(state[0], W_hh, b_hh)
        elif b_hh is not None:
            pre = pre + b_hh
        new, _ = forward(tuple(pre.chunk(G, dim=-1)), tuple(state), tuple(unit))
        return tuple(new)

    return Cell(name, G, scope["forward"], scope["backward"], reference or reference_step, states=S, saved=A,
                params=tuple(params), recurrent=recurrent, sources=tuple(sources) + (__file__,),
                pointwise=(forward, backward))
