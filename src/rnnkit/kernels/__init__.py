"""Fused engines: hoisted input GEMM, hand-written BPTT, compiled time loop (see fused.py), also as
the torch operators ``torch.ops.rnnkit.fused_layer`` and ``fused_layer_backward`` (op.py), registered
on import, for torch.compile and torch.export.

:func:`supports` is plain torch; ``run_fused`` is imported on first use, so ``import rnnkit`` does not
pay for numba (~0.6 s) until a fused layer runs.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

DTYPES = (torch.float32, torch.float64)

# The loops' cell codes, and the extra storage per time step each stores (in units of H; see
# rnnkit.kernels.loops), here where no numba is imported: a layer traced by torch.export or
# torch.compile goes through the operators (op.py), whose fake implementations need them, without
# loading the compiled loops while the tracer runs.
RNN_TANH, RNN_RELU, LSTM, GRU, GRU_RESET_BEFORE = range(5)
ACTS = {RNN_TANH: 0, RNN_RELU: 0, LSTM: 1, GRU: 1, GRU_RESET_BEFORE: 1}
# code -> (kind, nonlinearity, reset_after): the cell a code runs, as rnnkit.layers names it
KINDS = {RNN_TANH: ("rnn", "tanh", True), RNN_RELU: ("rnn", "relu", True), LSTM: ("lstm", "tanh", True),
         GRU: ("gru", "tanh", True), GRU_RESET_BEFORE: ("gru", "tanh", False)}


def kind_code(kind: str, nonlinearity: str = "tanh", reset_after: bool = True) -> int:
    """The loops' code of a cell (see :data:`KINDS`)."""
    if kind == "rnn":
        return RNN_TANH if nonlinearity == "tanh" else RNN_RELU
    if kind == "lstm":
        return LSTM
    return GRU if reset_after else GRU_RESET_BEFORE


from . import op  # noqa: E402 - registers torch.ops.rnnkit (the loops load on first use)


def supports(x: Tensor, lengths: Tensor | None) -> bool:
    """Whether the fused engine can run a layer on this input (CPU, float32/float64, non-empty)."""
    if not x.is_cpu or x.dtype not in DTYPES or x.dim() != 3 or 0 in x.shape:
        return False
    return lengths is None or (lengths.device.type == "cpu" and lengths.dtype == torch.int64
                               and lengths.shape == (x.shape[0],))


@functools.lru_cache(maxsize=64)
def zeros(shape: tuple, dtype: torch.dtype, device: torch.device | None = None) -> Tensor:
    """Zeros made once per shape, dtype and device, for what nobody writes: a layer's initial state
    when none is given, the fused engine's missing biases and b_hn, an unused final state's gradient
    (a new tensor per call was part of 2-3% of a small train step: benchmarks/README.md, eighth
    pass). Made outside inference mode, so that a later training call can save it for backward."""
    with torch.inference_mode(False):
        return torch.zeros(shape, dtype=dtype, device=device)


def precompile() -> None:
    """Compile the loops for both dtypes into numba's on-disk cache (~84 s with their team bodies
    on a 2-core Zen 5, ~105 s on a Zen 4, once per install: `make install` runs it), so that no
    training run pays for it. The cell is a runtime value of the loops, so one small layer per dtype
    compiles them all; it runs split into two row shards, so that what starts a team compiles too."""
    from . import blas
    from . import team  # noqa: F401 - the team bodies compile (or load) on import
    from .fused import run_fused

    saved = blas.TEAM_ROWS_MIN_WORK, blas.SHARD_MIN_ROWS, blas.SHARD_MIN_WORK, torch.get_num_threads()
    blas.TEAM_ROWS_MIN_WORK = blas.SHARD_MIN_ROWS = blas.SHARD_MIN_WORK = 1
    torch.set_num_threads(2)
    try:
        for dtype in DTYPES:
            x = torch.zeros(2, 3, 1, dtype=dtype, requires_grad=True)
            weights = (torch.zeros(4, 1, dtype=dtype), torch.zeros(4, 4, dtype=dtype), None, None)
            out, _ = run_fused("rnn", x, (torch.zeros(2, 4, dtype=dtype),), weights)
            out.sum().backward()
    finally:
        blas.TEAM_ROWS_MIN_WORK, blas.SHARD_MIN_ROWS, blas.SHARD_MIN_WORK, threads = saved
        torch.set_num_threads(threads)


def __getattr__(name: str):
    if name == "run_fused":
        from .fused import run_fused
        globals()["run_fused"] = run_fused  # found directly from now on (layers look it up per call)
        return run_fused
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ACTS", "KINDS", "kind_code", "op", "precompile", "run_fused", "supports", "zeros"]
