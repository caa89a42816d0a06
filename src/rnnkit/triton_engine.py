"""``engine="triton"``: the cells cuDNN lacks, on a GPU, as Triton kernels (rnnkit.triton_kernels).

On CUDA, torch's op (cuDNN) runs torch.nn's own layers; the GRU with the reset gate before the
product (the seed's, Cho et al.'s, Keras' ``reset_after=False``), the seed's CustomRNN and the cells
of rnnkit.kernels.cells beyond torch.nn's (the peephole LSTM, IndRNN, a user's own) have no such
op, and would run the reference loop there, a handful of kernel launches per step. This engine runs
one layer-direction as:

1. the input's pre-activations for every step, one GEMM (torch: cuBLAS), biases folded in;
2. one kernel for the whole time loop (rnnkit.triton_kernels.forward_kernel);
3. backward: one kernel for the whole loop backwards, then the weight gradients as GEMMs over every
   step (the input's through torch's autograd of step 1).

It runs the built-in cells of :data:`rnnkit.triton_kernels.CELLS` (Elman tanh and relu, LSTM, GRU
with the reset gate after or before the product) with kernels written for them, and the cells made
by rnnkit.kernels.cells.pointwise with a loop written around their own functions
(rnnkit.triton_pointwise), in float32 and float64, on CUDA tensors, or on CPU
tensors under Triton's interpreter (``TRITON_INTERPRET=1`` set before the first call: how the tests
run it without a GPU). float32 products follow torch's ``torch.backends.cuda.matmul.allow_tf32``
(off by default: IEEE products, as torch.nn's). Its backward is not differentiable again: a backward
with ``create_graph=True`` through it raises (use ``engine="reference"`` for gradient penalties).

``pip install 'rnnkit[triton]'`` installs Triton (CUDA builds of torch bring their own); importing
rnnkit does not import it.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ConfigError

# rnnkit.kernels.cells' names of the cells it runs (rnnkit.triton_kernels.CELLS, without importing Triton)
CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru", "gru_reset_before")
DTYPES = (torch.float32, torch.float64)
BLOCK_ROWS = 16  # batch rows a program (tl.dot's smallest tile)
BLOCK_UNITS = 32  # the largest tile of hidden units (smaller where H is)
# Up to this hidden size one persistent kernel runs the whole time loop (its programs are the batch's
# tiles of rows); above it each step is a GEMM (cuBLAS) and a kernel over tiles of rows and units.
PERSISTENT_MAX_UNITS = 256
# A persistent kernel whose W_hh fits one tile of units and this many elements (G blocks of BJ x BJ)
# loads it once and holds it (in registers) for every step; a bigger one reads it from L2 each step.
HOLD_MAX_ELEMENTS = 4096
# Warps a program: what the persistent loops need so that ptxas keeps them in registers at these
# tiles (tests/triton_compile.py reports the registers and spills of every variant); 4 where W_hh
# is held (8 crashed Triton 3.9's LLVM on the held LSTM) and for the lighter kernels of one step.
WARPS_PERSISTENT, WARPS_HELD, WARPS_STEP = 8, 4, 4


def interpreting() -> bool:
    """Whether Triton runs its kernels in its interpreter, on CPU tensors (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "") == "1"


@functools.cache
def installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _cell_refusal(cell, projection: bool) -> str | None:
    """Why this engine does not run ``cell`` (a rnnkit.kernels.cells Cell), or None."""
    if cell.name in CELLS:
        return "LSTM with proj_size" if projection else None
    from .triton_pointwise import translation_error

    error = translation_error(cell)
    return None if error is None else f"the cell {cell.name!r}: {error}"


def serves(cell, x: Tensor, lengths: Tensor | None, projection: bool = False) -> bool:
    """Whether this engine runs ``cell`` (a rnnkit.kernels.cells Cell; ``projection``: LSTM's
    proj_size) on ``x`` (B, T, I) with these ``lengths``."""
    if cell is None or x.dtype not in DTYPES or x.dim() != 3 or 0 in x.shape:
        return False
    if not (x.is_cuda or (x.is_cpu and interpreting())):
        return False
    if lengths is not None and (lengths.dtype != torch.int64 or tuple(lengths.shape) != (x.shape[0],)):
        return False
    return installed() and _cell_refusal(cell, projection) is None


def refusal(cell, x: Tensor, lengths: Tensor | None, projection: bool = False) -> str:
    """Why :func:`serves` says no, as a ConfigError's text."""
    why = _cell_refusal(cell, projection)
    if why is not None:
        return (f"engine='triton' runs {', '.join(CELLS)} and the cells made by rnnkit.kernels.cells.pointwise "
                f"(no LSTM projection), not {why} (use engine='auto' or 'reference')")
    if not installed():
        return "engine='triton' needs Triton: pip install 'rnnkit[triton]' (or a CUDA build of torch)"
    return (f"engine='triton' runs non-empty float32/float64 CUDA tensors (CPU tensors only under "
            f"TRITON_INTERPRET=1) with int64 lengths; got {x.dtype} on {x.device}, input of shape "
            f"{tuple(x.shape)} (use engine='auto' to fall back)")


def _launcher(kernel, B: int, H: int, code: int, G: int, dtype: torch.dtype, lengths: Tensor | None):
    """``launch(persistent, *args, **constants)``: ``kernel`` on one program per BLOCK_ROWS rows
    (persistent: each over every unit, holding W_hh where it is small), or per tile of rows and units
    (one step)."""
    rows = -(-B // BLOCK_ROWS)
    constants = {persistent: dict(_common(dtype, lengths), CELL=code, G=G, **launch_options(H, G, persistent))
                 for persistent in (True, False)}  # (made once: a per-step caller launches T times)

    def launch(persistent: bool, *args, **more):
        chosen = constants[persistent]
        kernel[(rows, 1 if persistent else -(-H // chosen["BJ"]))](*args, **chosen, **more)

    return launch


def launch_options(H: int, G: int, persistent: bool, pointwise: bool = False) -> dict:
    """The tiles, warps and HOLD of a kernel over H units of G gate blocks: persistent (the whole
    loop) or one step; ``pointwise``: a pointwise cell's loop (rnnkit.triton_pointwise), which holds
    nothing."""
    BJ = min(BLOCK_UNITS, max(16, 1 << (H - 1).bit_length()))
    options = dict(BB=BLOCK_ROWS, BJ=BJ, BK=BJ)
    if pointwise:
        return dict(options, num_warps=WARPS_PERSISTENT)
    hold = persistent and H <= BJ and G * BJ * BJ <= HOLD_MAX_ELEMENTS
    warps = WARPS_HELD if hold else WARPS_PERSISTENT if persistent else WARPS_STEP
    return dict(options, HOLD=hold, num_warps=warps)


def _precision(dtype: torch.dtype) -> str:
    return "tf32" if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 and not interpreting() else "ieee"


def _states(like: Tensor, T: int, h0: Tensor, c0: Tensor | None) -> tuple[Tensor, Tensor]:
    """hs and cs (B, T+1, H), the states of every step, [:, 0] the initial ones (cs is hs without c0)."""
    B, H = h0.shape
    hs = like.new_empty(B, T + 1, H)
    hs[:, 0] = h0
    if c0 is None:
        return hs, hs
    cs = like.new_empty(B, T + 1, H)
    cs[:, 0] = c0
    return hs, cs


def _outputs(hs: Tensor, cs: Tensor, lengths: Tensor | None, two: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(output (B, T, H), zero past each row's length as the other engines; h_T; c_T, or an empty
    tensor for a cell of one state)."""
    T = hs.shape[1] - 1
    output = hs[:, 1:]
    if lengths is not None:
        output = output * _alive(lengths, T).unsqueeze(2).to(output.dtype)
    else:
        output = output.clone()
    return output, hs[:, T].clone(), (cs[:, T].clone() if two else hs.new_empty(0))


def _gradients_in(hs: Tensor, d_output: Tensor | None, d_hT: Tensor | None) -> tuple[Tensor, Tensor]:
    """(dy (B, T, H), dh (2, B, H) with dh[0] = h_T's gradient): what a backward starts from. Refuses
    a backward that builds a graph (create_graph): its gradients would miss their own dependence on
    the inputs through the saved states, silently (once_differentiable catches that only where the
    incoming gradients require grad)."""
    if torch.is_grad_enabled():
        raise RuntimeError("engine='triton' has no double backward (torch.autograd.grad(..., create_graph=True) "
                           "through it); use engine='reference' for gradient penalties")
    B, T1, H = hs.shape
    dy = hs.new_zeros(B, T1 - 1, H) if d_output is None else d_output.contiguous()
    dh = hs.new_empty(2, B, H)
    dh[0] = 0 if d_hT is None else d_hT
    return dy, dh


class _Loop(torch.autograd.Function):
    """The time loop of one layer-direction: (xg (B, T, G*H), W_hh, b_hn, h0, c0) -> (output (B, T,
    H), h_T, c_T), the layouts of rnnkit.triton_kernels."""

    @staticmethod
    def forward(ctx, name: str, lengths: Tensor | None, xg: Tensor, w_hh: Tensor, b_hn: Tensor, h0: Tensor,
                c0: Tensor):
        from . import triton_kernels as tk

        code, G = tk.CELLS[name]
        B, T, GH = xg.shape
        H = GH // G
        hs, cs = _states(xg, T, h0, c0 if name == "lstm" else None)
        acts = xg.new_empty(B, T, GH) if G > 1 else hs
        aux = xg.new_empty(B, T, H) if name in ("gru", "gru_reset_before") else hs
        lengths_here = None if lengths is None else lengths.to(xg.device)
        launch = _launcher(tk.forward_kernel, B, H, code, G, xg.dtype, lengths_here)
        args = (xg, w_hh, b_hn, hs, cs, acts, aux)
        if H <= PERSISTENT_MAX_UNITS:
            launch(True, *args, hs, 0, lengths_here, B, T, H, 0, T, REC=False, PHASE=0)
        else:  # each step's products as one GEMM, then the step's pointwise kernel
            for t in range(T):
                if name == "gru_reset_before":
                    rec = hs[:, t] @ w_hh[:2 * H].t()  # r, z
                    launch(False, *args, rec, rec.stride(0), lengths_here, B, T, H, t, 1, REC=True, PHASE=1)
                    rec = aux[:, t] @ w_hh[2 * H:].t()  # n, of r ⊙ h
                    launch(False, *args, rec, rec.stride(0), lengths_here, B, T, H, t, 1, REC=True, PHASE=2)
                else:
                    rec = hs[:, t] @ w_hh.t()
                    launch(False, *args, rec, rec.stride(0), lengths_here, B, T, H, t, 1, REC=True, PHASE=0)
        ctx.save_for_backward(w_hh, hs, cs, acts, aux, lengths_here)
        ctx.name = name
        return _outputs(hs, cs, lengths_here, name == "lstm")

    @staticmethod
    def backward(ctx, d_output, d_hT, d_cT):
        from . import triton_kernels as tk

        w_hh, hs, cs, acts, aux, lengths = ctx.saved_tensors
        dy, dh = _gradients_in(hs, d_output, d_hT)
        name = ctx.name
        code, G = tk.CELLS[name]
        B, T1, H = hs.shape
        T = T1 - 1
        dg = hs.new_empty(B, T, G * H)
        dr = hs.new_empty(B, T, G * H) if name == "gru" else dg
        dc = (hs.new_zeros(B, H) if d_cT is None else d_cT.clone()) if name == "lstm" else dh
        launch = _launcher(tk.backward_kernel, B, H, code, G, hs.dtype, lengths)
        NK = 2 if name == "gru_reset_before" else G  # the gate blocks whose product reads h
        args = (w_hh, hs, cs, acts, aux, dy, dg, dr, dh, dc)
        if H <= PERSISTENT_MAX_UNITS:
            launch(True, *args, hs, 0, lengths, B, T, H, 0, T, NK=NK, REC=False, PHASE=0)
        else:  # each step's pointwise kernel, then its product with W_hh as one GEMM
            for s in range(T):
                t = T - 1 - s
                launch(False, *args, hs, 0, lengths, B, T, H, s, 1, NK=NK, REC=True, PHASE=1)
                if name == "gru_reset_before":  # r's gradient through the product of r ⊙ h
                    rec = dg[:, t, 2 * H:] @ w_hh[2 * H:]
                    launch(False, *args, rec, rec.stride(0), lengths, B, T, H, s, 1, NK=NK, REC=True, PHASE=2)
                dh[(s + 1) % 2].addmm_(dr[:, t, :NK * H], w_hh[:NK * H])
        h_before = hs[:, :T].reshape(B * T, H)
        d_w = dr.reshape(B * T, G * H).t() @ h_before  # (G*H, H)
        if name == "gru_reset_before":  # the n block's product reads r ⊙ h
            d_w[2 * H:] = dr[:, :, 2 * H:].reshape(B * T, H).t() @ aux.reshape(B * T, H)
        d_bn = dr[:, :, 2 * H:].sum((0, 1)) if name == "gru" else None
        d_c0 = dc if name == "lstm" else None
        return None, None, dg, d_w, d_bn, dh[T % 2].clone(), d_c0


class _PointwiseLoop(torch.autograd.Function):
    """The time loop of a pointwise cell (rnnkit.triton_pointwise): (xg (B, T, G*H), W_hh, the unit
    parameters (P, H), h0, c0) -> (output, h_T, c_T)."""

    @staticmethod
    def forward(ctx, cell, lengths: Tensor | None, xg: Tensor, w_hh: Tensor, prm: Tensor, h0: Tensor, c0: Tensor):
        from .triton_pointwise import module

        B, T, _ = xg.shape
        H = h0.shape[1]
        hs, cs = _states(xg, T, h0, c0 if cell.states == 2 else None)
        keep = xg.new_empty(B, T, (cell.gates + cell.saved) * H)
        lengths_here = None if lengths is None else lengths.to(xg.device)
        module(cell).forward_kernel[(-(-B // BLOCK_ROWS),)](
            xg, w_hh, prm, hs, cs, keep, lengths_here, B, T, H, **_pointwise_constants(cell, H, xg.dtype, lengths))
        ctx.save_for_backward(w_hh, prm, hs, cs, keep, lengths_here)
        ctx.cell = cell
        return _outputs(hs, cs, lengths_here, cell.states == 2)

    @staticmethod
    def backward(ctx, d_output, d_hT, d_cT):
        from .triton_pointwise import module

        w_hh, prm, hs, cs, keep, lengths = ctx.saved_tensors
        dy, dh = _gradients_in(hs, d_output, d_hT)
        cell = ctx.cell
        B, T1, H = hs.shape
        T = T1 - 1
        dg = hs.new_empty(B, T, cell.gates * H)
        dc = (hs.new_zeros(B, H) if d_cT is None else d_cT.clone()) if cell.states == 2 else dh
        dprm = hs.new_empty(B, T, max(len(cell.params), 1), H)
        module(cell).backward_kernel[(-(-B // BLOCK_ROWS),)](
            w_hh, prm, hs, cs, keep, dy, dg, dh, dc, dprm, lengths, B, T, H,
            **_pointwise_constants(cell, H, hs.dtype, lengths))
        d_w = dg.reshape(B * T, -1).t() @ hs[:, :T].reshape(B * T, H) if cell.recurrent else None
        d_prm = dprm.sum((0, 1)) if cell.params else None
        return None, None, dg, d_w, d_prm, dh[T % 2].clone(), (dc if cell.states == 2 else None)


def _common(dtype: torch.dtype, lengths: Tensor | None) -> dict:
    """What every kernel is compiled with besides its tiles: lengths or not, the products' precision,
    a * b + c as one FMA (as cuBLAS)."""
    return dict(HAS_LENGTHS=lengths is not None, PREC=_precision(dtype), enable_fp_fusion=True)


def _pointwise_constants(cell, H: int, dtype: torch.dtype, lengths: Tensor | None) -> dict:
    return dict(launch_options(H, cell.gates, True, pointwise=True), **_common(dtype, lengths))


def _alive(lengths: Tensor, T: int) -> Tensor:
    """(B, T) bool: step t is within row b's length."""
    return torch.arange(T, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def _reverse(x: Tensor, lengths: Tensor | None) -> Tensor:
    """x (B, T, ·) with each row's first ``length`` steps in reverse order (all T without lengths);
    its own inverse."""
    if lengths is None:
        return x.flip(1)
    B, T = x.shape[:2]
    steps = torch.arange(T, device=x.device).unsqueeze(0)
    ends = lengths.to(x.device).unsqueeze(1)
    index = torch.where(steps < ends, ends - 1 - steps, steps)  # (B, T)
    return x.gather(1, index.unsqueeze(2).expand(-1, -1, x.shape[2]))


def run_triton(cell, x: Tensor, state: tuple, weights: tuple, lengths: Tensor | None = None,
               reverse: bool = False, nonlinearity: str = "tanh", reset_after: bool = True) -> tuple[Tensor, tuple]:
    """One layer-direction, with the signature of rnnkit.layers.run_reference."""
    from .layers import cell_of

    cell = cell_of(cell, nonlinearity, reset_after)
    projection = cell.name == "lstm" and len(weights) > 4
    if not serves(cell, x, lengths, projection):
        raise ConfigError(refusal(cell, x, lengths, projection))
    W_ih, W_hh, b_ih, b_hh, *unit = weights
    H = state[0].shape[1]
    xg = F.linear(x, W_ih, b_ih)  # (B, T, G*H)
    gru = cell.name == "gru"
    if b_hh is not None:  # folded into the input's, but for GRU's b_hn, which r scales
        xg = xg + (torch.cat([b_hh[:2 * H], b_hh.new_zeros(H)]) if gru else b_hh)
    if reverse:
        xg = _reverse(xg, lengths)
    h0 = state[0].contiguous()
    c0 = (state[1] if len(state) > 1 else state[0]).contiguous()
    w_hh = xg if W_hh is None else W_hh.contiguous()  # (a cell without W_hh reads none)
    if cell.name in CELLS:
        b_hn = b_hh[2 * H:] if gru and b_hh is not None else xg.new_zeros(H)
        output, h, c = _Loop.apply(cell.name, lengths, xg.contiguous(), w_hh, b_hn.contiguous(), h0, c0)
    else:
        prm = torch.stack(unit) if unit else xg.new_zeros(1, H)  # (P, H)
        output, h, c = _PointwiseLoop.apply(cell, lengths, xg.contiguous(), w_hh, prm, h0, c0)
    if reverse:
        output = _reverse(output, lengths)
    return output, ((h, c) if cell.states == 2 else (h,))
