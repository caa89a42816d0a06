"""Cells of the fused engine: one :class:`Cell` per file of this package, one entry in
:data:`REGISTRY`.

A cell is what the one time loop (rnnkit.kernels.loops) needs to know of it: how many gate blocks,
states and saved values it has, which unit parameters, whether it multiplies h by a matrix W_hh
each step, and its pointwise forward and backward over one batch row; plus its reference step (the
textbook equations in :mod:`rnnkit.cells`, on tensors), which the reference loop runs and which the
tests hold the fused engine to. The loop is compiled once per cell and dtype, with the cell's
functions in it (rnnkit.kernels.build).

**Row functions.** A cell's ``forward(c, b, r, t, tx, ta, p, q, j0, j1, v, project)`` computes units
[j0, j1) of batch row b at time t: from the pre-activations ``c.xg[b, tx, k, j] + c.rec[r, k, j - j0]``
(gate block k: the input's, biases folded in, plus the recurrent product h W_hh^T of this step) and
the states ``c.hs[b, p, j]`` (and ``c.cs[b, p, j]`` for a second state), it writes the new states at
``q``, what its backward will read into ``c.xg[b, tx, k, j]`` (any of the G slots) and
``c.ag[b, ta, a, j]`` (its A saved values). ``c.prm[i, j]`` are its unit parameters, ``c.bg[k, j]``
b_hh's blocks kept apart (``apart``), ``c.shared`` a row of scratch. Where ``project`` is true
(one input feature) the loop has written xg from ``v`` already, unless the cell does not keep its
pre-activations (``keeps_pre=False``): then it reads ``c.proj[0, k, j] + v * c.proj[1, k, j]`` (the
bias and W_ih's column: the input's pre-activation) instead of xg, written out in the gate loop (called
as a function of its own, LLVM left that loop scalar).
Its ``backward(c, b, t, p, q, j0, j1)`` gets ``c.dh[b, j]`` (the gradient of the new h from the
later steps), ``c.dy[b, t, j]`` (from the output), ``c.dc[b, j]`` (of a second state) and writes
``c.dGg[b, t, k, j]`` (the pre-activations' gradients), and, for the step before, dh (but for the
product dG W_hh, which the loop adds) and dc; the unit parameters' gradients it adds into
``c.psum[i, j]``, and for blocks kept apart the recurrent product's gradient into
``c.grecg[b, t, k, j]``. Indices j come from unsigned bounds and arithmetic stays in the data's
dtype (``one = c.hs.dtype.type(1.0)``): see rnnkit.kernels.loops.

Write each activation as its own loop over j, and never store into one row of an array in a loop
that reads another row of it (use ``c.shared``): LLVM cannot tell such rows apart and leaves the
loop scalar (2-3x slower). :func:`pointwise` makes the row functions from per-unit scalar math
instead, simpler to write and slower to run.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True, eq=False)
class Cell:
    name: str
    gates: int  # G: W_ih is (G*H, I), W_hh (G*H, H)
    forward: Callable  # row functions (see the module docstring)
    backward: Callable
    reference: Callable  # step(x (B, I), state tuple, W_ih, W_hh, b_ih, b_hh, *params) -> state tuple
    states: int = 1  # 1 (h) or 2 (h and a second state, c)
    saved: int = 0  # A: values per unit and step the backward reads besides xg
    params: tuple = ()  # names of unit parameters, (H,) each
    recurrent: bool = True  # W_hh (G*H, H) multiplies h every step; False: the cell has no W_hh
    apart: tuple = ()  # gate blocks whose recurrent product (with its b_hh) the cell uses apart from x's
    keeps_pre: bool = True  # False: the forward stores nothing in xg (the loop need not write it)
    # (forward_second, backward_second): the last gate block's product reads saved value 0 (made by
    # forward from the other blocks) in a second phase of each step, then forward_second(c, b, t,
    # tx, p, q, j0, j1) finishes the step; backward_second(c, b, t, p, j0, j1) gets that product's
    # gradient c.drh and writes block 0's dG (GRU with the reset gate before the product).
    second: tuple | None = None
    sources: tuple = field(default=())  # files whose text the compiled loops depend on (for the cache)
    pointwise: tuple = ()  # the per-unit forward and backward of a cell made by pointwise()

    @functools.cached_property
    def source_hash(self) -> str:
        """A hash of the cell's definition: its functions' source (and its files')."""
        digest = hashlib.sha256(self.name.encode())
        functions = [self.forward, self.backward, *(self.second or ()), *self.pointwise]
        for fn in functions:
            try:
                digest.update(inspect.getsource(fn).encode())
            except (OSError, TypeError):
                digest.update(repr(fn.__code__.co_code).encode())
        for path in self.sources:
            with open(path, "rb") as f:
                digest.update(f.read())
        digest.update(repr((self.gates, self.states, self.saved, self.params, self.recurrent, self.apart,
                            self.keeps_pre)).encode())
        return digest.hexdigest()


def register(cell: Cell) -> Cell:
    """Make ``cell`` runnable by name (rnnkit.Recurrent, run_fused, the torch operator)."""
    REGISTRY[cell.name] = cell
    return cell


def get(name) -> Cell:
    """The cell of that name, or the Cell itself."""
    if isinstance(name, Cell):
        return name
    return REGISTRY[name]


def builtin(kind: str, nonlinearity: str = "tanh", reset_after: bool = True) -> Cell:
    """The cell torch.nn's arguments name: rnn (tanh or relu), lstm, gru (reset after or before)."""
    if kind == "rnn":
        return REGISTRY["rnn_relu" if nonlinearity == "relu" else "rnn_tanh"]
    if kind == "gru" and not reset_after:
        return REGISTRY["gru_reset_before"]
    return REGISTRY[kind]


from . import elman, gru, indrnn, lstm, peephole  # noqa: E402
from .pointwise import pointwise  # noqa: E402

# name -> Cell: the built-in cells (one entry each), then any a user registers
REGISTRY: dict = {cell.name: cell for cell in (
    elman.RNN_TANH,
    elman.RNN_RELU,
    lstm.LSTM,
    gru.GRU,
    gru.GRU_RESET_BEFORE,
    peephole.PEEPHOLE_LSTM,
    indrnn.INDRNN,
)}
BUILTIN = tuple(REGISTRY)

__all__ = ["BUILTIN", "Cell", "REGISTRY", "builtin", "get", "pointwise", "register"]
