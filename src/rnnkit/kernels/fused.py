"""The fused engine: one layer-direction as a torch.autograd.Function around the compiled loops.

Forward: ``xp = x W_ih^T + b_ih + b_hh`` for all steps as one GEMM (batch-major, so no transposes),
then the recurrence in :func:`rnnkit.kernels.loops.forward`, on several threads when the layer is
big enough (batch-row or hidden-unit shards: :mod:`rnnkit.kernels.blas`).
Backward: hand-written BPTT in :func:`rnnkit.kernels.loops.backward`, then every weight gradient as
one GEMM over all steps (``dW_ih = dG^T x``, ``dW_hh = dG_h^T h_prev``) and ``dx = dG W_ih``.
:func:`run_fused` has the signature of :func:`rnnkit.layers.run_reference` and is held to it in
float64 by tests/test_kernels.py. Arrays of a megabyte and more are kept from call to call
(:mod:`rnnkit.kernels.buffers`).

The backward is first-order only (``once_differentiable``): asking for a double backward through it
raises instead of returning a wrong answer; use ``engine="reference"`` for that.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import blas, buffers, loops

def kind_code(kind: str, nonlinearity: str = "tanh", reset_after: bool = True) -> int:
    if kind == "rnn":
        return loops.RNN_TANH if nonlinearity == "tanh" else loops.RNN_RELU
    if kind == "lstm":
        return loops.LSTM
    return loops.GRU if reset_after else loops.GRU_RESET_BEFORE


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


@functools.lru_cache(maxsize=16)
def _gru_mask(H: int, dtype: torch.dtype) -> Tensor:
    """(3H,) ones over the r and z blocks, zeros over n: the b_hh that folds into GRU's input bias."""
    mask = torch.ones(3 * H, dtype=dtype)
    mask[2 * H:] = 0
    return mask


@functools.lru_cache(maxsize=64)
def _own_rows(shards: tuple, H: int, blocks: int) -> Tensor:
    """The rows of W_hh that the forward loop's W_own holds (see there): for each unit shard in turn,
    its units in each of the first ``blocks`` gate blocks."""
    return torch.cat([torch.arange(k * H + j0, k * H + j1) for _, _, j0, j1 in shards for k in range(blocks)])


def _input_bias(code: int, b_ih: Tensor | None, b_hh: Tensor | None, W_hh: Tensor):
    """The bias folded into the input projection, and GRU's b_hn (reset after), which r scales and
    so stays out of it (zeros when there is none)."""
    H = W_hh.shape[1]
    b_hn = None
    if b_hh is not None:
        b_hh = b_hh.detach()
    if code == loops.GRU:
        if b_hh is None:
            b_hn = W_hh.new_zeros(H)
        else:
            b_hn = b_hh[2 * H:]
            if b_ih is not None:
                return torch.addcmul(b_ih.detach(), b_hh, _gru_mask(H, b_hh.dtype)), b_hn
            b_hh = b_hh * _gru_mask(H, b_hh.dtype)
    if b_ih is None or b_hh is None:
        bias = b_ih if b_hh is None else b_hh
    else:
        bias = b_ih + b_hh
    return (None if bias is None else bias.detach()), b_hn


def _forward(code: int, reverse: bool, lengths: Tensor | None, x: Tensor, h0: Tensor, c0: Tensor | None,
             W_ih: Tensor, W_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None, store: bool):
    """The forward pass of :class:`FusedLayer` (see there) as a plain function, with autograd off.
    Returns out, h_n, c_n and what the backward pass needs (its activations only when store)."""
    B, T, I = x.shape
    GH, H = W_hh.shape
    x2 = x.detach().reshape(B * T, I)  # (B*T, I), a view when x is contiguous
    bias, b_hn = _input_bias(code, b_ih, b_hh, W_hh)
    W_ih = W_ih.detach()
    xp = buffers.empty((B * T, GH), x.dtype)
    if bias is None:
        torch.mm(x2, W_ih.t(), out=xp)  # (B*T, G*H)
    elif I == 1:  # an outer product: addcmul measured ~1.7x faster than addmm's K = 1 GEMM
        torch.addcmul(bias, x2, W_ih.t(), out=xp)
    else:
        torch.addmm(bias, x2, W_ih.t(), out=xp)
    xp = xp.view(B, T, GH)
    first, last = (T, 0) if reverse else (0, T)
    hs = buffers.empty((B, T + 1, H), x.dtype)
    hs[:, first] = h0
    lstm = code == loops.LSTM
    cs = buffers.empty((B, T + 1 if lstm else 0, H), x.dtype)
    if lstm:
        cs[:, first] = c0
    acts = buffers.empty((B, T if store else 1, loops.ACTS[code] * H), x.dtype)
    W = W_hh.detach().contiguous()
    lens = _lengths(lengths, B, T)
    b_hn_np = (b_hn if b_hn is not None else W[0]).numpy()  # (H,), read by GRU (reset after) only
    xp_np = xp.numpy()
    plan = blas.plan(B, H, GH)
    if plan.parties == 1:
        W_own = W
    else:  # each thread's rows of W_hh together (loops.forward's W_own)
        blocks = 2 if code == loops.GRU_RESET_BEFORE else GH // H
        rows = _own_rows(tuple(plan.shards), H, blocks)
        W_own = torch.index_select(W, 0, rows, out=buffers.empty((len(rows), H), W.dtype))
    blas.run_sharded(loops.forward, (code, blas.blas().gemm[xp_np.dtype], xp_np, hs.numpy(), cs.numpy(),
                                     acts.numpy(), W.numpy(), W_own.numpy(), b_hn_np, lens, reverse), plan)
    out = hs[:, :-1] if reverse else hs[:, 1:]  # (B, T, H)
    if lengths is not None:
        alive = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
        out = out * alive.unsqueeze(2).to(out.dtype)
    c_n = cs[:, last] if lstm else None
    return out, hs[:, last], c_n, (x2, xp, hs, cs, acts, W, lens, plan)


class FusedLayer(torch.autograd.Function):
    """One layer-direction. Inputs x (B, T, I), h0, c0 (B, H) (c0 None but for LSTM), torch-layout
    weights; returns output (B, T, H) (zero past each sequence's length), h_n and c_n (B, H)."""

    @staticmethod
    def forward(ctx, code: int, reverse: bool, lengths: Tensor | None, x: Tensor, h0: Tensor,
                c0: Tensor | None, W_ih: Tensor, W_hh: Tensor, b_ih: Tensor | None,
                b_hh: Tensor | None):
        out, h_n, c_n, (x2, xp, hs, cs, acts, W, lens, plan) = _forward(
            code, reverse, lengths, x, h0, c0, W_ih, W_hh, b_ih, b_hh, store=True)
        ctx.save_for_backward(x2, xp, hs, cs, acts, W_ih, W, b_ih, b_hh)
        ctx.config = (code, reverse, lens, x.shape, plan)  # the backward splits the work the same way
        return out, h_n, c_n

    @staticmethod
    @once_differentiable
    def backward(ctx, dout: Tensor, dh_n: Tensor, dc_n: Tensor | None):
        x2, xp, hs, cs, acts, W_ih, W_hh, b_ih, b_hh = ctx.saved_tensors
        code, reverse, lens, x_shape, plan = ctx.config
        B, T, GH = xp.shape
        H = hs.shape[2]
        lstm = code == loops.LSTM
        dy = dout.contiguous()  # (B, T, H)
        dh = dh_n.clone(memory_format=torch.contiguous_format)
        dc = dc_n.clone(memory_format=torch.contiguous_format) if lstm else hs.new_empty(0, 0)
        dG = buffers.empty((B, T, GH), hs.dtype)
        dG_np = dG.numpy()
        dG_h = buffers.empty((B, T, GH if code == loops.GRU else 0), hs.dtype)  # the loop's grec
        dan = np.empty((B, H if code == loops.GRU_RESET_BEFORE else 0), dG_np.dtype)
        blas.run_sharded(loops.backward, (code, blas.blas().gemm[dG_np.dtype], dy.numpy(), dh.numpy(),
                                          dc.numpy(), hs.numpy(), cs.numpy(), xp.numpy(), acts.numpy(),
                                          W_hh.numpy(), lens, reverse, dG_np, dG_h.numpy(), dan,
                                          np.empty_like(dan)), plan)
        need = ctx.needs_input_grad  # code, reverse, lengths, x, h0, c0, W_ih, W_hh, b_ih, b_hh
        dG2 = dG.view(B * T, GH)  # (B*T, G*H)
        W_ih = W_ih.detach()
        dx = dW_ih = None
        # Written as the products that measured fast: with 2-8 input features, dG W_ih and dG^T x
        # took 4-6x longer than the same products transposed (benchmarks/README.md).
        # (Contiguous results: DDP checks a gradient's strides against its parameter's.)
        odd = 1 < x2.shape[1] <= 8
        if need[3]:
            dx = (torch.mm(W_ih.t(), dG2.t()).t().contiguous() if odd else torch.mm(dG2, W_ih)).view(x_shape)
        if need[6]:
            dW_ih = torch.mm(x2.t(), dG2).t().contiguous() if odd else torch.mm(dG2.t(), x2)
        db_ih = dG2.sum(0) if b_ih is not None and need[8] else None
        dW_hh = db_hh = None
        if need[7] or (b_hh is not None and need[9]):
            h_prev = buffers.empty((B, T, H), hs.dtype)
            h_prev.copy_(hs[:, 1:] if reverse else hs[:, :-1])
            h_prev = h_prev.view(B * T, H)  # (B*T, H)
            if code == loops.GRU_RESET_BEFORE:
                # The n rows of W_hh multiply r ⊙ h_prev, stored in acts.
                rh = acts.view(B * T, H)
                dG_h = dG2
                dW_hh = torch.cat([torch.mm(dG2[:, : 2 * H].t(), h_prev), torch.mm(dG2[:, 2 * H:].t(), rh)])
            else:
                # GRU: the n rows of W_hh h + b_hh are scaled by r before they meet the input's, so
                # their gradient is the loop's dG_h, not dG.
                dG_h = dG_h.view(B * T, GH) if code == loops.GRU else dG2
                dW_hh = torch.mm(dG_h.t(), h_prev)
            if b_hh is not None:  # the same sum as db_ih unless GRU rescaled dG_h; a copy is cheaper
                db_hh = db_ih.clone() if dG_h is dG2 and db_ih is not None else dG_h.sum(0)
        return (None, None, None, dx, dh if need[4] else None, dc if lstm and need[5] else None,
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
