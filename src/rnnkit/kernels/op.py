"""The fused engine as torch operators, for torch.compile, torch.export and fake tensors.

``torch.ops.rnnkit.fused_layer`` runs one layer-direction as :class:`rnnkit.kernels.fused.FusedLayer`
does, and ``torch.ops.rnnkit.fused_layer_backward`` its hand-written BPTT; the first has the second
as its registered autograd formula, and both have fake implementations (shapes only, symbolic sizes
kept symbolic), so torch.compile keeps a layer as one node of its graph (and its backward as another),
and torch.export captures it with a dynamic batch and length. An eager call takes the
autograd.Function instead (:func:`rnnkit.kernels.run_fused`): the same loops, without the
dispatcher's cost per call. :func:`run_op` is the engine function over them.

The operators' outputs are new tensors (an operator's outputs may not share memory): the forward's
results and the activations its backward reads, which are outputs too so that a compiled graph
saves them. Registering costs nothing until the loops run: the compiled loops load on first use.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Whether torch.onnx.export runs with rnnkit's translation of fused_layer into ONNX's own RNN, GRU
# and LSTM operators (rnnkit.export sets it for its export); else a layer exports as torch's ops.
TRANSLATED = False


@torch.library.custom_op("rnnkit::fused_layer", mutates_args=())
def fused_layer(x: Tensor, h0: Tensor, c0: Tensor | None, W_ih: Tensor, W_hh: Tensor, b_ih: Tensor | None,
                b_hh: Tensor | None, lengths: Tensor | None, code: int,
                reverse: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One layer-direction (see FusedLayer): x (B, T, I), h0 and c0 (B, H) (c0 None but for a cell of
    two states), torch-layout weights, lengths (B,) int64 or None; ``code`` the cell's
    (rnnkit.kernels.kind_code: a cell with a recurrent matrix and no unit parameters). Returns the
    output (B, T, H), h_n, c_n (B, H; empty but for two states), and the activations for the
    backward: xp (B, T, G*H), hs (B, T+1, H), cs (B, T+1 or 0, H), acts."""
    from . import cell_of
    from .fused import _forward, check_call

    cell = cell_of(code)
    check_call(cell, x, (h0,) if c0 is None else (h0, c0), (W_ih, W_hh, b_ih, b_hh), lengths)
    out, h_n, c_n, (_, xp, hs, cs, acts, _, _, _, _) = _forward(cell, reverse, lengths, x, h0, c0, W_ih, W_hh,
                                                               b_ih, b_hh, (), store=True)
    c_n = h0.new_empty(0) if c_n is None else c_n.clone()
    return out.clone(), h_n.clone(), c_n, xp.clone(), hs.clone(), cs.clone(), acts.clone()


@fused_layer.register_fake
def _(x, h0, c0, W_ih, W_hh, b_ih, b_hh, lengths, code, reverse):
    from . import cell_of

    B, T, _ = x.shape
    GH, H = W_hh.shape
    two = c0 is not None
    return (x.new_empty(B, T, H), x.new_empty(B, H), x.new_empty(B, H) if two else x.new_empty(0),
            x.new_empty(B, T, GH), x.new_empty(B, T + 1, H), x.new_empty(B, T + 1 if two else 0, H),
            x.new_empty(B, T, cell_of(code).saved * H))


@torch.library.custom_op("rnnkit::fused_layer_backward", mutates_args=())
def fused_layer_backward(dout: Tensor, dh_n: Tensor, dc_n: Tensor, x: Tensor, xp: Tensor, hs: Tensor,
                         cs: Tensor, acts: Tensor, W_ih: Tensor, W_hh: Tensor, lengths: Tensor | None,
                         code: int, reverse: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The BPTT of :func:`fused_layer`: from the outputs' gradients (dc_n empty but for two states)
    and its activations, (dx, dh0, dc0 (empty but for two states), dW_ih, dW_hh, db_ih, db_hh)."""
    from . import cell_of, plan, zeros
    from .fused import _backward, _lengths

    cell = cell_of(code)
    B, T, _ = x.shape
    GH, H = W_hh.shape
    two = cell.states == 2
    config = (cell, reverse, _lengths(lengths, B, T), plan.plan(B, H, GH))
    saved = (x.contiguous(), xp, hs, cs, acts, W_ih, W_hh.contiguous(), zeros((0, H), x.dtype))
    grads = _backward(config, saved, dout, dh_n, dc_n if two else None, (True, True, two, True, True, True, True))
    dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh = grads
    return (dx.clone(), dh0, x.new_empty(0) if dc0 is None else dc0, dW_ih.clone(), dW_hh.clone(),
            db_ih.clone(), db_hh.clone())


@fused_layer_backward.register_fake
def _(dout, dh_n, dc_n, x, xp, hs, cs, acts, W_ih, W_hh, lengths, code, reverse):
    from . import cell_of

    B, H = dh_n.shape
    two = cell_of(code).states == 2
    return (torch.empty_like(x), dh_n.new_empty(B, H), dh_n.new_empty(B, H) if two else dh_n.new_empty(0),
            torch.empty_like(W_ih), torch.empty_like(W_hh),
            W_hh.new_empty(W_hh.shape[0]), W_hh.new_empty(W_hh.shape[0]))


def _setup_context(ctx, inputs, output) -> None:
    x, h0, c0, W_ih, W_hh, b_ih, b_hh, lengths, code, reverse = inputs
    _, _, _, xp, hs, cs, acts = output
    ctx.save_for_backward(x, xp, hs, cs, acts, W_ih, W_hh, lengths)
    ctx.config = (code, reverse, c0 is not None, b_ih is not None, b_hh is not None)


def _autograd(ctx, dout, dh_n, dc_n, *_activations):
    """fused_layer's gradients (the activations are outputs for the backward only: theirs are zero)."""
    x, xp, hs, cs, acts, W_ih, W_hh, lengths = ctx.saved_tensors
    code, reverse, two, has_b_ih, has_b_hh = ctx.config
    dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh = fused_layer_backward(
        dout, dh_n, dc_n, x, xp, hs, cs, acts, W_ih, W_hh, lengths, code, reverse)
    return (dx, dh0, dc0 if two else None, dW_ih, dW_hh, db_ih if has_b_ih else None,
            db_hh if has_b_hh else None, None, None, None)


fused_layer.register_autograd(_autograd, setup_context=_setup_context)


def serves(cell) -> bool:
    """Whether the operator runs ``cell`` (a recurrent matrix, no unit parameters)."""
    return cell.recurrent and not cell.params


def run_op(kind, x: Tensor, state: tuple, weights: tuple, lengths: Tensor | None = None,
           reverse: bool = False, nonlinearity: str = "tanh", reset_after: bool = True) -> tuple[Tensor, tuple]:
    """The fused engine as :func:`fused_layer`, with the signature and results of
    :func:`rnnkit.layers.run_reference`: what a traced or compiled layer runs (one graph node; fake
    tensors welcome; the compiled loops load when the graph first runs, not while it is traced)."""
    from . import cells, kind_code

    code = kind_code(kind.name if isinstance(kind, cells.Cell) else kind, nonlinearity, reset_after)
    two = len(state) == 2
    c0 = state[1] if two else None
    out, h_n, c_n = fused_layer(x, state[0], c0, *weights, lengths, code, reverse)[:3]
    return out, ((h_n, c_n) if two else (h_n,))
