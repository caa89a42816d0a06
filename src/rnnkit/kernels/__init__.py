"""The fused engine: hoisted input GEMM, hand-written BPTT, one compiled time loop per cell.

Map (one concern a module):

* :mod:`.cells` — the cells (a file each, one registry entry each) and :func:`.cells.pointwise`;
  :mod:`.ops` — the pointwise functions a cell is written with (numba-free);
* :mod:`.loops` — the one time loop, forward and backward, specialized per cell;
  :mod:`.products` — the micro-kernel, packing, BLAS by address; :mod:`.expmath` — exp and the
  activations; :mod:`.sync` — atomics, bounded waits, tasks;
* :mod:`.layout` — the block, the one named structure Python and the loops share;
* :mod:`.build` — compiling a cell's loops into an object (numba, llvmlite); :mod:`.compiled` —
  the objects kept on disk and loaded without numba;
* :mod:`.plan` — how a call is split between threads; :mod:`.launch` — running a block on them;
  :mod:`.blas` — the BLAS for products too big to pack;
* :mod:`.fused` — the autograd.Function and :func:`run_fused`; :mod:`.op` — the same as the torch
  operators ``torch.ops.rnnkit.fused_layer`` and ``fused_layer_backward``, registered on import, for
  torch.compile and torch.export; :mod:`.buffers` — arrays kept between calls.

Importing this package loads neither numba nor the compiled loops: :func:`supports` is plain torch,
and ``run_fused`` is imported on first use.

Private APIs the engine relies on, each used directly by tests/test_private_apis.py (which fails by
name if one changes), and with the tests that fail through it:

* ``torch._C._storage_Use_Count`` and ``Tensor._use_count`` (buffers: whether a kept call's arrays
  are free) — tests/test_buffers.py; without them nothing is kept (slower, still right).
* ``torch._C._FunctionBase.apply`` (fused: the autograd.Function's C++ apply) —
  tests/test_kernels.py (every fused gradient).
* ``torch._C._are_functorch_transforms_active``, ``torch._C._get_tracing_state``,
  ``torch._C._is_any_autocast_enabled``, ``torch.autograd.forward_ad._current_level``,
  ``torch.onnx._internal.exporter._flags`` (layers: which engine a call takes) —
  tests/test_dropin.py.
* MKL's ``sgemm_``, ``dgemm_``, ``MKL_Set_Num_Threads_Local`` in torch's ``libtorch_cpu.so`` and
  ``GOMP_parallel`` in its ``libgomp.so.1`` (blas, launch; looked up by name, each optional: without
  them OpenBLAS and a pool of Python threads) — tests/test_kernels.py (every path, and both BLAS).
* numba's ``@intrinsic`` codegen API and ``context.get_dummy_value``, a cfunc's
  ``inspect_llvm``/``native_name``, and the names of the externals its error path calls
  (build: the module it emits, those externals made traps) — every fused test.

Everything the loops read arrives through the block (:mod:`.layout`); the compiled code calls
nothing but LLVM's intrinsics and the addresses it is given (checked when it is built).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

DTYPES = (torch.float32, torch.float64)

# The torch operator's codes of the cells (an index into cells.REGISTRY; the built-in cells' are
# these), and what rnnkit.layers calls them.
RNN_TANH, RNN_RELU, LSTM, GRU, GRU_RESET_BEFORE = range(5)
KINDS = {RNN_TANH: ("rnn", "tanh", True), RNN_RELU: ("rnn", "relu", True), LSTM: ("lstm", "tanh", True),
         GRU: ("gru", "tanh", True), GRU_RESET_BEFORE: ("gru", "tanh", False)}


def kind_code(kind: str, nonlinearity: str = "tanh", reset_after: bool = True) -> int:
    """The operator's code of the cell torch.nn's arguments name, or of a registered cell."""
    if kind == "rnn":
        return RNN_TANH if nonlinearity == "tanh" else RNN_RELU
    if kind == "lstm":
        return LSTM
    if kind == "gru":
        return GRU if reset_after else GRU_RESET_BEFORE
    from . import cells

    return list(cells.REGISTRY).index(cells.get(kind).name)


def cell_of(code: int):
    """The cell of an operator's code."""
    from . import cells

    return list(cells.REGISTRY.values())[code]


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
    when none is given, the fused engine's missing biases, an unused final state's gradient (a new
    tensor per call is a measurable part of a small layer's train step).
    Made outside inference mode, so that a later training call can save it for backward."""
    with torch.inference_mode(False):
        return torch.zeros(shape, dtype=dtype, device=device)


def precompile(processes: int | None = None, *, cells: tuple | None = None,
               dtypes: tuple = ("float32", "float64")) -> None:
    """Compile the product entry points and ``cells``' loops (names; default: every built-in cell)
    for ``dtypes`` into the cache (rnnkit.kernels.compiled), in ``processes`` processes at once
    (default: the CPU count), so that no later call waits for them; what is already there is kept.
    Whatever is left out compiles when a call first needs it (one line on stderr). ``make install``
    builds the CLI's cells (gru, lstm, rnn_tanh) for float32 this way."""
    import os
    import subprocess
    import sys

    from . import cells as registry, compiled

    names = registry.BUILTIN if cells is None else tuple(cells)
    jobs = [f"{name}:{dtype}" for name in ("products", *names) for dtype in dtypes]
    command = [sys.executable, "-m", f"{__name__}.build", "-j", str(processes or os.cpu_count() or 1), *jobs]
    subprocess.run(command, env=compiled.build_env(), check=True)


def __getattr__(name: str):
    if name == "run_fused":
        from .fused import run_fused
        globals()["run_fused"] = run_fused  # found directly from now on (layers look it up per call)
        return run_fused
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DTYPES", "KINDS", "cell_of", "kind_code", "op", "precompile", "run_fused", "supports", "zeros"]
