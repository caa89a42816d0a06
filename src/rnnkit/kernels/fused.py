"""The fused engine: one layer-direction as a torch.autograd.Function around the compiled loops.

Forward: ``xp = x W_ih^T + b_ih + b_hh`` for all steps as one GEMM (batch-major, so no transposes),
then the recurrence in :func:`rnnkit.kernels.loops.forward`, on several threads when the layer is
big enough (batch-row or hidden-unit shards: :mod:`rnnkit.kernels.blas`). Where each thread has
whole rows, it copies their initial states and, with one input feature (an outer product, not a
GEMM), makes their xp itself, each step's as it comes to it: three torch calls fewer, and under
no_grad an xp of one step rather than of all.
Backward: hand-written BPTT in :func:`rnnkit.kernels.loops.backward`, which also sums the bias
gradients (and, with one input feature, ``dW_ih = dG^T x``, a weighted sum then) as it goes, and
on batch-row shards makes each shard's share of ``dW_hh = dG_h^T h_prev`` as one product after
its steps; then every other weight gradient as one GEMM over all steps (``dW_ih = dG^T x``,
``dW_hh`` on hidden-unit shards) and ``dx = dG W_ih``.
:func:`run_fused` has the signature of :func:`rnnkit.layers.run_reference` and is held to it in
float64 by tests/test_kernels.py. A small call's arrays are kept whole from call to call, with
the team block that points at them (:func:`rnnkit.kernels.buffers.work`); a bigger one's arrays of
a megabyte and more are kept one by one (:func:`rnnkit.kernels.buffers.empty`).

A double backward (``create_graph=True``) goes through the reference loop (:class:`FusedLayer`).
Under torch.compile, torch.export or fake tensors the layers run the torch operator
``rnnkit::fused_layer`` instead (:func:`rnnkit.kernels.op.run_op`), the same loops behind it.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from ..errors import ShapeError
from . import DTYPES, KINDS, blas, buffers, kind_code, loops, team, zeros

@functools.lru_cache(maxsize=16)
def _full_lengths(B: int, T: int) -> Tensor:
    """(B,) int64 tensor of T, made once per shape: the loop only reads it, and building it per
    call was a measurable share of a small layer's call."""
    return torch.full((B,), T, dtype=torch.int64)


def _lengths(lengths: Tensor | None, B: int, T: int) -> Tensor:
    """(B,) int64 lengths for the loop; all T when absent."""
    if lengths is None:
        return _full_lengths(B, T)
    return lengths.contiguous()


def _loop_args(kind: int, gemm: int, reverse: bool, arrays: list, split: int) -> tuple:
    """A loop's arguments from its arrays as tensors, in its order (``reverse`` after the first
    ``split``), and its leading scalars."""
    np_arrays = [a.detach().numpy() for a in arrays]  # (parameters as they are: the loops only read them)
    return (kind, gemm, *np_arrays[:split], reverse, *np_arrays[split:])


def _work(name, loop, kind: int, reverse: bool, plan: blas.Plan, shapes: tuple, dtype: torch.dtype,
          compose, split: int):
    """This call's arrays of ``shapes`` (:func:`rnnkit.kernels.buffers.work`), kept with the team
    block over the loop's arrays that ``compose(arrays)`` lists (None where the loop runs from
    Python; :func:`_launch` points it at each call's arrays and sync array, whose shapes the block
    keeps: ``name`` with ``shapes`` must fix them). Returns the work and its arrays."""
    np_dtype = buffers._numpy_dtype(dtype)
    gemm = blas.blas().gemm[np_dtype]
    body = blas.team_body(loop, np_dtype)
    key = (name, kind, reverse, dtype, plan, gemm, body, shapes)
    return buffers.work(key, shapes, dtype, lambda arrays: blas.team_block(
        loop, _loop_args(kind, gemm, reverse, compose(arrays), split), plan, body,
        blas.sync_address(plan)[0]))  # a sync array of the call's length (each call points at its own)


def _launch(work: buffers.Work, loop, kind: int, reverse: bool, plan: blas.Plan, arrays: list,
            split: int) -> None:
    """Run the loop over this call's arrays (tensors in its order, see :func:`_loop_args`): as the
    work's team block pointed at them, else from Python (:func:`rnnkit.kernels.blas.run_sharded`)."""
    if work.extra is None:
        gemm = blas.blas().gemm[buffers._numpy_dtype(arrays[0].dtype)]
        blas.run_sharded(loop, _loop_args(kind, gemm, reverse, arrays, split), plan)
    else:
        block, address, body, slots = work.extra
        sync, sync_address = blas.sync_address(plan)  # (held until the team is done)
        team.point(slots, [sync_address, *[a.data_ptr() for a in arrays]])
        block[team.STATUS] = 0
        blas.start(body, address, plan)
        buffers.done(work)  # (a call not kept: its block to the next call of the same shapes)
        if block[team.STATUS]:
            blas.check_team(block)


@functools.lru_cache(maxsize=256)
def _first_rows(plan: blas.Plan) -> list:
    """The first row of each of the plan's shards, once each (unit shards all start at row 0)."""
    return sorted({shard[0] for shard in plan.shards})


@functools.lru_cache(maxsize=256)
def _slots(plan: blas.Plan, B: int) -> Tensor:
    """(B,) int64: at each shard's first row, the shard's place in the plan (its row of the backward
    loop's sums); zeros elsewhere."""
    slot = torch.zeros(B, dtype=torch.int64)
    for s, b0 in enumerate(_first_rows(plan)):
        slot[b0] = s
    return slot


def _weights_grad_in_loop(code: int, plan: blas.Plan) -> bool:
    """Whether the backward loop's row shards make dW_hh themselves (loops._shard_weights_grad),
    each its rows' share in the loops' own product, rather than torch.mm after the loop (at a small
    layer its call and threads cost more than the product; at a big one MKL's AVX2 kernels are
    slower than that product: benchmarks/README.md, eleventh pass); not with GRU's reset gate
    before the product, whose dW_hh is two products."""
    return plan.parties == 1 and code != loops.GRU_RESET_BEFORE


@functools.lru_cache(maxsize=16)
def _gru_mask(H: int, dtype: torch.dtype) -> Tensor:
    """(3H,) ones over the r and z blocks, zeros over n: the b_hh that folds into GRU's input bias."""
    mask = torch.ones(3 * H, dtype=dtype)
    mask[2 * H:] = 0
    return mask


def _input_bias(code: int, b_ih: Tensor | None, b_hh: Tensor | None, H: int) -> Tensor | None:
    """The bias folded into the input projection (None when there is none): b_ih + b_hh, but for
    GRU's b_hn (reset after), which r scales and so stays out of it."""
    if b_hh is not None:
        b_hh = b_hh.detach()
    if code == loops.GRU and b_hh is not None:
        if b_ih is not None:
            return torch.addcmul(b_ih.detach(), b_hh, _gru_mask(H, b_hh.dtype))
        b_hh = b_hh * _gru_mask(H, b_hh.dtype)
    if b_ih is None or b_hh is None:
        bias = b_ih if b_hh is None else b_hh
    else:
        bias = b_ih + b_hh
    return None if bias is None else bias.detach()


def _forward(code: int, reverse: bool, lengths: Tensor | None, x: Tensor, h0: Tensor, c0: Tensor | None,
             W_ih: Tensor, W_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None, store: bool):
    """The forward pass of :class:`FusedLayer` (see there) as a plain function, with autograd off.
    Returns out, h_n, c_n and what the backward pass needs (its activations only when store)."""
    B, T, I = x.shape
    GH, H = W_hh.shape
    # (No detach: autograd is off here, and compiled code reads the tensors by address.)
    x3 = x.contiguous()  # (B, T, I), read by the loop
    W_ih = W_ih.contiguous()
    if b_ih is not None:
        b_ih = b_ih.contiguous()
    if b_hh is not None:
        b_hh = b_hh.contiguous()
    W = W_hh.contiguous()
    lens = _lengths(lengths, B, T)
    # (H,), read by GRU (reset after) only
    b_hn = b_hh[2 * H:] if code == loops.GRU and b_hh is not None else zeros((H,), x.dtype)
    plan = blas.plan(B, H, GH)
    lstm = code == loops.LSTM
    # Where one thread has every unit, each row shard's thread copies its initial states and, with one
    # input feature, projects its input (loops.forward): else torch does, here.
    start = plan.parties == 1
    h_init = h0.contiguous()
    c_init = c0.contiguous() if lstm else h_init
    zero = zeros((GH,), x.dtype)
    b_i = zero if b_ih is None else b_ih
    b_h = zero if b_hh is None else b_hh
    # Where nothing will read the activations and the loops project x (one row shard each, one input
    # feature), they project each step's row as they go into an xp of one step (loops.forward): the
    # per-step time at B64 H128 LSTM otherwise grew by 14% from T=50 to T=200 with xp's megabytes.
    steps = T if store or not (start and I == 1) else 1
    shapes = ((B, steps, GH), (B, T + 1, H), (B, T + 1 if lstm else 0, H), (B, T if store else 1, loops.ACTS[code] * H))

    def compose(arrays):  # the loop's arrays
        return [*arrays, W, b_hn, lens, x3, W_ih, b_i, b_h, h_init, c_init]

    # (keyed on I too: the block holds x's and W_ih's shapes)
    work, arrays = _work(("forward", I), loops.forward, code, reverse, plan, shapes, x.dtype, compose, 13)
    xp, hs, cs, acts = arrays
    if not (start and I == 1):
        x2 = x3.view(B * T, I)
        xp2 = xp.view(B * T, GH)
        bias = _input_bias(code, b_ih, b_hh, H)
        if bias is None:
            torch.mm(x2, W_ih.t(), out=xp2)  # (B*T, G*H)
        elif I == 1:  # an outer product: addcmul measured ~1.7x faster than addmm's K = 1 GEMM
            torch.addcmul(bias, x2, W_ih.t(), out=xp2)
        else:
            torch.addmm(bias, x2, W_ih.t(), out=xp2)
    first, last = (T, 0) if reverse else (0, T)
    if not start:
        hs.select(1, first).copy_(h0)  # (select and narrow: cheaper than indexing, a call that counts)
        if lstm:
            cs.select(1, first).copy_(c0)
    _launch(work, loops.forward, code, reverse, plan, compose(arrays), 13)
    # The results, views all made by as_strided: in a train step the first call of each kind of
    # torch operation costs 4-7 us, its code gone from the caches, a second one 1-2 us
    # (benchmarks/README.md, twelfth pass).
    row, at = (T + 1) * H, hs.storage_offset()
    out = hs.as_strided((B, T, H), (row, H, 1), at + (0 if reverse else H))  # hs[:, :-1] reverse, else hs[:, 1:]
    if lengths is not None:
        alive = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
        out = out * alive.unsqueeze(2).to(out.dtype)
    h_n = hs.as_strided((B, H), (row, 1), at + last * H)  # hs[:, last]
    c_n = cs.as_strided((B, H), (row, 1), cs.storage_offset() + last * H) if lstm else None
    return out, h_n, c_n, (x3, xp, hs, cs, acts, W, lens, plan)


class FusedLayer(torch.autograd.Function):
    """One layer-direction. Inputs x (B, T, I), h0, c0 (B, H) (c0 None but for LSTM), torch-layout
    weights; returns output (B, T, H) (zero past each sequence's length), h_n and c_n (B, H).

    The backward is the hand-written BPTT. Where the gradient's own graph is asked for
    (``create_graph=True``: a gradient penalty, a Hessian-vector product), it is the reference
    loop's instead, recomputed from the inputs (:func:`_recomputed_grads`): the same first-order
    numbers, and the graph through them that the loops do not build."""

    @staticmethod
    def forward(ctx, code: int, reverse: bool, lengths: Tensor | None, x: Tensor, h0: Tensor,
                c0: Tensor | None, W_ih: Tensor, W_hh: Tensor, b_ih: Tensor | None,
                b_hh: Tensor | None):
        out, h_n, c_n, (x3, xp, hs, cs, acts, W, lens, plan) = _forward(
            code, reverse, lengths, x, h0, c0, W_ih, W_hh, b_ih, b_hh, store=True)
        # (Not the biases: the first-order backward does not read them, so one changed in place
        # since does not make its result wrong. The inputs themselves, for a recomputation.)
        ctx.save_for_backward(x3, xp, hs, cs, acts, W_ih, W)
        ctx.set_materialize_grads(False)  # an unused output's gradient comes as None, not new zeros
        ctx.config = (code, reverse, lens, plan)  # the backward splits the work the same way
        ctx.inputs = inputs = (lengths, x, h0, c0, W_ih, W_hh, b_ih, b_hh)
        ctx.versions = tuple(t._version for t in inputs if t is not None)  # (as saved tensors' are checked)
        return out, h_n, c_n

    @staticmethod
    def backward(ctx, dout: Tensor, dh_n: Tensor, dc_n: Tensor | None):
        if torch.is_grad_enabled():  # create_graph=True
            if tuple(t._version for t in ctx.inputs if t is not None) != ctx.versions:
                raise RuntimeError("one of the variables needed for gradient computation has been modified "
                                   "by an inplace operation (an input of an rnnkit fused layer)")
            return (None, None, *_recomputed_grads(ctx.config[:2], ctx.inputs, ctx.needs_input_grad[2:],
                                                   (dout, dh_n, dc_n)))
        return (None, None, None, *_backward(ctx.config, ctx.saved_tensors, dout, dh_n, dc_n,
                                             ctx.needs_input_grad[3:]))


def _recomputed_grads(config: tuple, inputs: tuple, need: tuple, grads: tuple) -> tuple:
    """The gradients of inputs (lengths, x, h0, c0, W_ih, W_hh, b_ih, b_hh) for the outputs' ``grads``
    as functions of the inputs and ``grads`` (a graph autograd can differentiate again): the layer
    run again on the reference loop, and its autograd's gradients."""
    from ..layers import run_reference

    code, reverse = config
    lengths, x, h0, c0, *weights = inputs
    kind, nonlinearity, reset_after = KINDS[code]
    with torch.enable_grad():
        out, state = run_reference(kind, x, (h0,) if c0 is None else (h0, c0), tuple(weights), lengths,
                                   reverse, nonlinearity, reset_after)
        pairs = [(o, g) for o, g in zip((out, *state), grads) if g is not None]
        wanted = [t for t, n in zip(inputs, need) if n]
        got = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs],
                                       create_graph=True, allow_unused=True))
    return tuple(next(got) if n else None for n in need)


def _backward(config: tuple, saved: tuple, dout: Tensor | None, dh_n: Tensor | None, dc_n: Tensor | None,
              need: tuple) -> tuple:
    """The hand-written BPTT of one layer-direction: from the forward's ``config`` (code, reverse,
    lens, plan) and ``saved`` arrays (x3, xp, hs, cs, acts, W_ih, W_hh) and the outputs' gradients
    (None where unused), the gradients (dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh), each None where
    ``need`` (one flag each, in that order) says it is not wanted."""
    x3, xp, hs, cs, acts, W_ih, W_hh = saved
    code, reverse, lens, plan = config
    B, T, GH = xp.shape
    H = hs.shape[2]
    lstm = code == loops.LSTM
    dy = torch.zeros(B, T, H, dtype=hs.dtype) if dout is None else dout.contiguous()  # (B, T, H)
    dh_n = zeros((B, H), hs.dtype) if dh_n is None else dh_n.contiguous()
    dc_n = dh_n if not lstm else zeros((B, H), hs.dtype) if dc_n is None else dc_n.contiguous()
    hn = H if code == loops.GRU_RESET_BEFORE else 0
    I = x3.shape[2]
    first_rows = _first_rows(plan)
    in_loop = need[4] and _weights_grad_in_loop(code, plan)
    # h_prev, the states the loop copies for dW_hh's product; none where its shares read them in
    # hs, row by row, for a small W_hh (loops._shard_weights_grad)
    prev = (0, 0, 0) if in_loop and GH * H * hs.element_size() <= loops.DIRECT_BYTES else (B, T, H)
    shapes = ((B, H), (B, H) if lstm else (0, 0), (B, T, GH), (B, T, GH if code == loops.GRU else 0),
              (B, hn), (B, hn), prev, (len(first_rows), 3 * GH + (GH * H if in_loop else 0)))
    slot = _slots(plan, B)

    def compose(arrays):  # the loop's arrays
        return [dy, *arrays[:2], hs, cs, xp, acts, W_hh, lens, *arrays[2:7], x3, arrays[7], dh_n, dc_n, slot]

    # (keyed on I too: the block holds x's shape)
    work, arrays = _work(("backward", I), loops.backward, code, reverse, plan, shapes, hs.dtype, compose, 9)
    dh, dc, dG, dG_h, _, _, h_prev, sums = arrays
    if plan.parties > 1:  # (else each thread copies its rows)
        dh.copy_(dh_n)  # the loop turns them into the initial states' gradients
        if lstm:
            dc.copy_(dc_n)
    _launch(work, loops.backward, code, reverse, plan, compose(arrays), 9)
    # The shards' rows of sums (loops.backward), added up: the input bias's gradient, W_ih's where
    # I = 1, b_hh's, each (G*H,); then dW_hh where the loops made it. The gradients are views of
    # this one fresh tensor (the work's arrays stay with it), as contiguous as their parameters
    # (DDP checks a gradient's strides against its parameter's), made by as_strided as the
    # forward's results are (and sum for one shard too): one kind of torch call fewer each.
    total = sums.sum(0)
    dx = dW_ih = dW_hh = None
    if need[0] or (need[3] and I > 1) or (need[4] and not in_loop):
        dG2 = dG.view(B * T, GH)  # (B*T, G*H)
        x2 = x3.view(B * T, I)
    # Written as the products that measured fast: with 2-8 input features, dG W_ih and dG^T x
    # took 4-6x longer than the same products transposed (benchmarks/README.md).
    odd = 1 < I <= 8
    if need[0]:
        dx = (torch.mm(W_ih.t(), dG2.t()).t().contiguous() if odd else torch.mm(dG2, W_ih)).view(B, T, I)
    if need[3]:
        if I == 1:  # a weighted sum, added up in the loop
            dW_ih = total.as_strided((GH, 1), (1, 1), GH)
        elif odd:
            dW_ih = torch.mm(x2.t(), dG2).t().contiguous()
        else:
            dW_ih = torch.mm(dG2.t(), x2)
    db_ih = total.as_strided((GH,), (1,), 0) if need[5] else None  # (False for a missing bias)
    db_hh = total.as_strided((GH,), (1,), 2 * GH) if need[6] else None
    if in_loop:  # the shards' shares, each from its loop
        dW_hh = total.as_strided((GH, H), (H, 1), 3 * GH)
    elif need[4]:
        h_prev = h_prev.view(B * T, H)  # (B*T, H), hs[:, 1:] reverse, else hs[:, :-1] (the loop copies it)
        if code == loops.GRU_RESET_BEFORE:
            # The n rows of W_hh multiply r ⊙ h_prev, stored in acts.
            rh = acts.view(B * T, H)
            dW_hh = torch.cat([torch.mm(dG2[:, : 2 * H].t(), h_prev), torch.mm(dG2[:, 2 * H:].t(), rh)])
        else:
            # GRU: the n rows of W_hh h + b_hh are scaled by r before they meet the input's, so
            # their gradient is the loop's dG_h, not dG.
            dG_h = dG_h.view(B * T, GH) if code == loops.GRU else dG2
            dW_hh = torch.mm(dG_h.t(), h_prev)
    dh0 = dh.clone() if need[1] else None  # (the work's own arrays stay with it)
    dc0 = dc.clone() if lstm and need[2] else None
    return dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh


_apply = super(torch.autograd.Function, FusedLayer).apply  # (torch._C._FunctionBase.apply)


_GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def _fits(G: int, lstm: bool, x, state, weights, lengths) -> bool:
    """Whether the arguments of :func:`run_fused` are what the loops read (see :func:`check_call`)."""
    try:
        W_ih, W_hh, b_ih, b_hh = weights
        B, T, I = x.shape
        GH, H = W_hh.shape
        dtype = x.dtype
        tensors = (x, W_ih, W_hh, *state) + ((b_ih,) if b_ih is not None else ()) + ((b_hh,) if b_hh is not None else ())
        return (B > 0 and T > 0 and H > 0 and GH == G * H and W_ih.shape == (GH, I) and len(state) == 1 + lstm
                and all(s.shape == (B, H) for s in state) and (b_ih is None or b_ih.shape == (GH,))
                and (b_hh is None or b_hh.shape == (GH,)) and dtype in DTYPES
                and all(t.dtype == dtype and t.is_cpu for t in tensors)
                and (lengths is None or (lengths.shape == (B,) and lengths.dtype == torch.int64 and lengths.is_cpu)))
    except (AttributeError, TypeError, ValueError):
        return False


def check_call(kind: str, x, state, weights, lengths) -> None:
    """Raise a ShapeError naming the first argument of a :func:`run_fused` call that the loops cannot
    read, in the caller's terms: x (B, T, I) float32/float64 on the CPU, non-empty; state (h0,) or,
    for LSTM, (h0, c0), each (B, H); weights (W_ih (G*H, I), W_hh (G*H, H), b_ih, b_hh (G*H,) or
    None) with G gate blocks (RNN 1, LSTM 4, GRU 3), all of x's dtype; lengths None or (B,) int64 on
    the CPU. (Contiguity is the engine's: it copies what is not.)"""
    G = _GATES.get(kind)
    if G is None:
        raise ShapeError(f"rnnkit's fused engine runs the cells rnn, lstm, gru; got {kind!r}")
    if _fits(G, kind == "lstm", x, state, weights, lengths):
        return
    name = f"rnnkit's fused {kind.upper()} layer"

    def shape(t):
        return tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__

    if not isinstance(x, Tensor) or x.dim() != 3 or 0 in x.shape:
        raise ShapeError(f"{name} expects input of shape (batch, seq_len, input_size), non-empty; got {shape(x)}")
    if x.dtype not in DTYPES or not x.is_cpu:
        raise ShapeError(f"{name} runs float32/float64 CPU tensors; got input {x.dtype} on {x.device}")
    B, T, I = x.shape
    if not isinstance(weights, (tuple, list)) or len(weights) != 4:
        raise ShapeError(f"{name} expects weights (W_ih, W_hh, b_ih, b_hh); got {len(weights)} of them"
                         if isinstance(weights, (tuple, list)) else f"{name} expects a tuple of weights")
    W_ih, W_hh, b_ih, b_hh = weights
    if not isinstance(W_hh, Tensor) or W_hh.dim() != 2 or W_hh.shape[1] == 0 or W_hh.shape[0] != G * W_hh.shape[1]:
        raise ShapeError(f"{name} expects W_hh of shape ({G}*hidden_size, hidden_size); got {shape(W_hh)}")
    GH, H = W_hh.shape
    wanted = [("W_ih", W_ih, (GH, I)), ("b_ih", b_ih, (GH,)), ("b_hh", b_hh, (GH,))]
    names = ("h0", "c0") if kind == "lstm" else ("h0",)
    if not isinstance(state, (tuple, list)) or len(state) != len(names):
        raise ShapeError(f"{name} expects the state as a tuple ({', '.join(names)})")
    wanted += [(n, s, (B, H)) for n, s in zip(names, state)]
    for n, t, want in wanted:
        if t is None and n.startswith("b_"):
            continue
        if not isinstance(t, Tensor) or tuple(t.shape) != want:
            raise ShapeError(f"{name} with input of shape {tuple(x.shape)} and W_hh of shape {tuple(W_hh.shape)} "
                             f"(hidden size {H}) expects {n} of shape {want}; got {shape(t)}")
        if t.dtype != x.dtype or not t.is_cpu:
            raise ShapeError(f"{name} expects {n} of the input's dtype {x.dtype} on the CPU; got {t.dtype} on {t.device}")
    raise ShapeError(f"{name} expects lengths None or of shape ({B},), int64 on the CPU; got "
                     f"{shape(lengths)}{'' if not isinstance(lengths, Tensor) else f' {lengths.dtype} on {lengths.device}'}")


def run_fused(kind: str, x: Tensor, state: tuple, weights: tuple, lengths: Tensor | None = None,
              reverse: bool = False, nonlinearity: str = "tanh",
              reset_after: bool = True) -> tuple[Tensor, tuple]:
    """The fused engine, with the signature and results of :func:`rnnkit.layers.run_reference`. The
    arguments are checked first (:func:`check_call`): a wrong shape or dtype raises a ShapeError
    instead of reaching the loops, which read arrays by address."""
    check_call(kind, x, state, weights, lengths)
    W_ih, W_hh, b_ih, b_hh = weights
    code = kind_code(kind, nonlinearity, reset_after)
    c0 = state[1] if code == loops.LSTM else None
    args = (code, reverse, lengths, x, state[0], c0, W_ih, W_hh, b_ih, b_hh)
    if torch.is_grad_enabled() and (W_ih.requires_grad or W_hh.requires_grad or x.requires_grad
                                    or any(t is not None and t.requires_grad for t in (b_ih, b_hh, *state))):
        # autograd.Function.apply's own C++ part where no functorch transform is on: the Python
        # wrapper around it only unwraps functorch's tensors (a few us of a small layer's call).
        apply = FusedLayer.apply if torch._C._are_functorch_transforms_active() else _apply
        out, h_n, c_n = apply(*args)
    else:
        # No gradient wanted: skip the autograd.Function (~8 us a call) and the stored activations
        # (needs_input_grad inside it is set under torch.no_grad too).
        out, h_n, c_n, _ = _forward(*args, store=False)
    return out, ((h_n, c_n) if code == loops.LSTM else (h_n,))
