"""The fused engine: one layer-direction as a torch.autograd.Function around the compiled loops.

Forward: ``xp = x W_ih^T + b_ih`` for all steps as one GEMM, then the recurrence in
:func:`rnnkit.kernels.loops.forward`. Backward: hand-written BPTT in
:func:`rnnkit.kernels.loops.backward`, then every weight gradient as one GEMM over all steps
(``dW_ih = dG^T x``, ``dW_hh = dG_h^T h_prev``) and ``dx = dG W_ih``. :func:`run_fused` has the
signature of :func:`rnnkit.layers.run_reference` and is held to it in float64 by tests/test_kernels.py.

The backward is first-order only (``once_differentiable``): asking for a double backward through it
raises instead of returning a wrong answer; use ``engine="reference"`` for that.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools

import numpy as np
import scipy.linalg.cython_blas  # noqa: F401  (numba's np.dot calls the BLAS that scipy loads)
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import loops

def kind_code(kind: str, nonlinearity: str = "tanh", reset_after: bool = True) -> int:
    if kind == "rnn":
        return loops.RNN_TANH if nonlinearity == "tanh" else loops.RNN_RELU
    if kind == "lstm":
        return loops.LSTM
    return loops.GRU if reset_after else loops.GRU_RESET_BEFORE


@functools.cache
def _openblas_threads_setters() -> tuple:
    """openblas_set_num_threads_local of every loaded OpenBLAS (numpy and scipy each bring one; numba
    calls scipy's), or none (another BLAS, or no /proc to find them in: the loop then runs with that
    BLAS's own threading)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return ()
    setters = (getattr(ctypes.CDLL(path), "openblas_set_num_threads_local", None) for path in sorted(paths))
    return tuple(s for s in setters if s is not None)


@contextlib.contextmanager
def single_thread_blas():
    """Run the loop's per-step BLAS calls on the calling thread only. They are small (B x H by
    H x G*H), and measured on 2 busy cores OpenBLAS's thread pool made them 3x slower
    (benchmarks/README.md); the setting is per thread and restored on exit."""
    setters = _openblas_threads_setters()
    old = [setter(1) for setter in setters]
    try:
        yield
    finally:
        for setter, n in zip(setters, old):
            setter(n)


@functools.lru_cache(maxsize=16)
def _full_lengths(B: int, T: int):
    """(B,) int64 numpy array of T, made once per shape: the loop only reads it, and building it per
    call (torch.full + .numpy()) was a measurable share of a small layer's call."""
    return np.full(B, T, np.int64)


def _lengths(lengths: Tensor | None, B: int, T: int):
    """(B,) int64 numpy lengths for the loop; all T when absent."""
    if lengths is None:
        return _full_lengths(B, T)
    return lengths.contiguous().numpy()


def _forward(code: int, reverse: bool, lengths: Tensor | None, x: Tensor, h0: Tensor, c0: Tensor | None,
             W_ih: Tensor, W_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None, store: bool):
    """The forward pass of :class:`FusedLayer` (see there) as a plain function, with autograd off.
    Returns out, h_n, c_n and what the backward pass needs (its activations only when store)."""
    B, T, _ = x.shape
    H = W_hh.shape[1]
    GH = W_hh.shape[0]
    x_tm = x.transpose(0, 1).reshape(T * B, -1)  # (T*B, I), time-major
    xp = (torch.mm(x_tm, W_ih.t()) if b_ih is None else torch.addmm(b_ih, x_tm, W_ih.t()))
    xp = xp.view(T, B, GH)  # (T, B, G*H)
    first = T if reverse else 0
    hs = x.new_empty(T + 1, B, H)  # (T+1, B, H)
    hs[first] = h0
    cs = x.new_empty(T + 1 if code == loops.LSTM else 0, B, H)
    if code == loops.LSTM:
        cs[first] = c0
    acts = x.new_empty(T if store else 1, B, loops.ACTS[code] * H)  # (T, B, A)
    W_hh_c = W_hh.detach().contiguous()
    b_hh_c = x.new_zeros(GH) if b_hh is None else b_hh.detach().contiguous()
    lens = _lengths(lengths, B, T)
    with single_thread_blas():
        loops.forward(code, xp.detach().numpy(), hs.numpy(), cs.numpy(), acts.numpy(),
                      W_hh_c.numpy(), b_hh_c.numpy(), lens, reverse, store)
    out = (hs[:-1] if reverse else hs[1:]).transpose(0, 1)  # (B, T, H)
    if lengths is not None:
        alive = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
        out = out * alive.unsqueeze(2).to(out.dtype)
    last = 0 if reverse else T
    c_n = cs[last] if code == loops.LSTM else None
    return out, hs[last], c_n, (x_tm, hs, cs, acts, W_hh_c, lens)


class FusedLayer(torch.autograd.Function):
    """One layer-direction. Inputs x (B, T, I), h0, c0 (B, H) (c0 None but for LSTM), torch-layout
    weights; returns output (B, T, H) (zero past each sequence's length), h_n and c_n (B, H)."""

    @staticmethod
    def forward(ctx, code: int, reverse: bool, lengths: Tensor | None, x: Tensor, h0: Tensor,
                c0: Tensor | None, W_ih: Tensor, W_hh: Tensor, b_ih: Tensor | None,
                b_hh: Tensor | None):
        store = any(ctx.needs_input_grad)
        out, h_n, c_n, (x_tm, hs, cs, acts, W_hh_c, lens) = _forward(
            code, reverse, lengths, x, h0, c0, W_ih, W_hh, b_ih, b_hh, store)
        if store:
            ctx.save_for_backward(x_tm, hs, cs, acts, W_ih, W_hh_c, b_ih, b_hh)
            ctx.config = (code, reverse, lens)
        return out, h_n, c_n

    @staticmethod
    @once_differentiable
    def backward(ctx, dout: Tensor, dh_n: Tensor, dc_n: Tensor | None):
        x_tm, hs, cs, acts, W_ih, W_hh, b_ih, b_hh = ctx.saved_tensors
        code, reverse, lens = ctx.config
        T1, B, H = hs.shape
        T = T1 - 1
        GH = W_hh.shape[0]
        dy = dout.transpose(0, 1).contiguous()  # (T, B, H)
        dh = dh_n.contiguous().clone()
        dc = (dc_n.contiguous().clone() if code == loops.LSTM else hs.new_empty(0, 0))
        dG = hs.new_empty(T, B, GH)  # (T, B, G*H)
        with single_thread_blas():
            loops.backward(code, dy.numpy(), dh.numpy(), dc.numpy(), hs.numpy(), cs.numpy(),
                           acts.numpy(), W_hh.numpy(), lens, reverse, dG.numpy())
        need = ctx.needs_input_grad  # code, reverse, lengths, x, h0, c0, W_ih, W_hh, b_ih, b_hh
        dG2 = dG.view(T * B, GH)  # (T*B, G*H)
        dx = torch.mm(dG2, W_ih).view(T, B, -1).transpose(0, 1) if need[3] else None  # (B, T, I)
        dW_ih = torch.mm(dG2.t(), x_tm) if need[6] else None
        db_ih = dG2.sum(0) if b_ih is not None and need[8] else None
        dW_hh = db_hh = None
        if need[7] or (b_hh is not None and need[9]):
            h_prev = (hs[1:] if reverse else hs[:-1]).reshape(T * B, H)  # (T*B, H)
            if code == loops.GRU_RESET_BEFORE:
                # The n rows of W_hh multiply r ⊙ h_prev, stored in acts.
                rh = acts[:, :, 3 * H:].reshape(T * B, H)  # (T*B, H)
                dG_h = dG2
                dW_hh = torch.cat([torch.mm(dG2[:, : 2 * H].t(), h_prev),
                                   torch.mm(dG2[:, 2 * H:].t(), rh)])
            else:
                if code == loops.GRU:
                    # The n rows of W_hh h + b_hh are scaled by r before they meet the input's.
                    dG_h = dG2.clone()
                    dG_h[:, 2 * H:] *= acts[:, :, :H].reshape(T * B, H)
                else:
                    dG_h = dG2
                dW_hh = torch.mm(dG_h.t(), h_prev)
            if b_hh is not None:  # the same sum as db_ih unless GRU rescaled dG_h; a copy is cheaper
                db_hh = db_ih.clone() if dG_h is dG2 and db_ih is not None else dG_h.sum(0)
        return (None, None, None, dx, dh if need[4] else None,
                dc if code == loops.LSTM and need[5] else None,
                dW_ih, dW_hh if need[7] else None, db_ih, db_hh if b_hh is not None and need[9] else None)


def run_fused(kind: str, x: Tensor, state: tuple, weights: tuple, lengths: Tensor | None = None,
              reverse: bool = False, nonlinearity: str = "tanh",
              reset_after: bool = True) -> tuple[Tensor, tuple]:
    """The fused engine, with the signature and results of :func:`rnnkit.layers.run_reference`."""
    W_ih, W_hh, b_ih, b_hh = weights
    code = kind_code(kind, nonlinearity, reset_after)
    c0 = state[1] if code == loops.LSTM else None
    args = (code, reverse, lengths, x, state[0], c0, W_ih, W_hh, b_ih, b_hh)
    if torch.is_grad_enabled() and any(isinstance(a, Tensor) and a.requires_grad for a in args):
        out, h_n, c_n = FusedLayer.apply(*args)
    else:
        # No gradient wanted: skip the autograd.Function (~8 us a call) and the stored activations
        # (needs_input_grad inside it is set under torch.no_grad too).
        out, h_n, c_n, _ = _forward(*args, store=False)
    return out, ((h_n, c_n) if code == loops.LSTM else (h_n,))
