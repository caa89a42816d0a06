"""The fused engine: one layer-direction as a torch.autograd.Function around the compiled loops.

Forward: ``xp = x W_ih^T + b_ih + b_hh`` for all steps as one GEMM (batch-major, so no transposes),
then the recurrence in the cell's compiled loop (rnnkit.kernels.loops), on several threads when the
layer is big enough (batch-row or hidden-unit shards: rnnkit.kernels.plan). Where each thread has
whole rows, it copies their initial states and, with one input feature (an outer product, not a
GEMM), makes their xp itself, each step's as it comes to it: three torch calls fewer, and under
no_grad an xp of one step rather than of all.
Backward: hand-written BPTT in the same loop, which also sums the bias gradients (and, with one
input feature, ``dW_ih = dG^T x``, a weighted sum then, and the cell's unit parameters') as it goes,
and on batch-row shards makes each shard's share of ``dW_hh = dG_h^T h_prev`` as one product after
its steps; then every other weight gradient as one GEMM over all steps and ``dx = dG W_ih``.

:func:`run_fused` has the signature of :func:`rnnkit.layers.run_reference` and is held to it by
tests/test_kernels.py. A small call's arrays are kept whole from call to call, with the block that
points at them (:func:`rnnkit.kernels.buffers.work`); a bigger one's arrays of a megabyte and more
are kept one by one (:func:`rnnkit.kernels.buffers.empty`).

A double backward (``create_graph=True``) goes through the reference loop (:class:`FusedLayer`).
Under torch.compile, torch.export or fake tensors the layers run the torch operator
``rnnkit::fused_layer`` instead (:func:`rnnkit.kernels.op.run_op`), the same loops behind it.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from ..errors import ShapeError
from . import DTYPES, blas, buffers, cells, compiled, launch, layout, zeros
from .layout import (BACKWARD_OP, DIRECT, DIRECT_BYTES, FORWARD_OP, PACKED, PACKED_DEPTH, PACKED_MAX_BYTES, STARTS,
                     THROUGH_BLAS)
from .plan import Plan, plan as make_plan


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


def products(GH: int, H: int, itemsize: int) -> int:
    """How the loops' products read W_hh (G*H, H): packed once per call, in place (the backward's,
    for a W_hh within DIRECT_BYTES and one depth chunk), or through BLAS (over PACKED_MAX_BYTES)."""
    nbytes = GH * H * itemsize
    if nbytes > PACKED_MAX_BYTES:
        return THROUGH_BLAS
    return DIRECT if GH < PACKED_DEPTH and nbytes <= DIRECT_BYTES else PACKED


def _scratch(cell, op: int, plan: Plan, H: int, itemsize: int, mode: int, project: bool) -> dict:
    """The sizes of one shard's scratch regions (rnnkit.kernels.layout.scratch_layout)."""
    G = cell.gates
    blocks = (G - (cell.second is not None)) if cell.recurrent else 0
    units = H if plan.parties == 1 else max(j1 - j0 for _, _, j0, j1 in plan.shards)
    rows = max(b1 - b0 for b0, b1, _, _ in plan.shards)
    packs = cell.recurrent and (mode != THROUGH_BLAS if op == FORWARD_OP else mode == PACKED)
    return {"rec": rows * blocks * units if op == FORWARD_OP else 0, "shared": H,
            "proj": 2 * G * H if op == FORWARD_OP and project else 0, "packed": G * H * H if packs else 0,
            "scal": 2, "ready": plan.parties, "starts": STARTS, "ws": 4}


class _Launch:
    """A kept block with its scratch memory and body: what a call of fixed shapes runs."""

    __slots__ = ("block", "scratch", "body", "threads", "through_blas")

    def __init__(self, cell, op: int, reverse: bool, plan: Plan, shapes: dict, dtype: torch.dtype,
                 project: bool = False) -> None:
        np_dtype = buffers._numpy_dtype(dtype)
        H = shapes["hs"][2]
        GH = cell.gates * H
        mode = products(GH, H, np_dtype.itemsize)
        block = layout.Block(op, shapes, plan.shards, plan.parties)
        launch.header(block, plan, blas.blas().gemm[np_dtype])
        sizes = _scratch(cell, op, plan, H, np_dtype.itemsize, mode, project)
        scratch = layout.scratch_layout(sizes, np_dtype.itemsize)
        self.scratch = torch.empty(len(plan.shards) * scratch.stride + 64, dtype=torch.uint8)
        block["scratch"] = self.scratch.data_ptr() + (-self.scratch.data_ptr() % 64)
        block["scratch_stride"] = scratch.stride
        for name, at in scratch.offsets.items():
            block[name] = at
        block["reverse"], block["products"], block["project"] = int(reverse), mode, int(project)
        block["units"] = H if plan.parties == 1 else max(j1 - j0 for _, _, j0, j1 in plan.shards)
        block["rows"] = max(b1 - b0 for b0, b1, _, _ in plan.shards)
        self.body = compiled.bodies(cell, str(np_dtype))[op]  # (first: builds the products with it)
        for name, address in compiled.products(str(np_dtype)).items():
            block[name] = address
        self.block = block
        self.threads = len(plan.shards)
        self.through_blas = mode == THROUGH_BLAS

    def __call__(self, tensors: list) -> None:
        """Run over the call's arrays (tensors in the loop's order)."""
        self.block.point([t.data_ptr() for t in tensors])
        launch.start(self.body, self.block, self.threads, self.through_blas)


def _work(name, cell, op: int, reverse: bool, plan: Plan, shapes: tuple, dtype: torch.dtype, others,
          project: bool = False):
    """This call's arrays of ``shapes`` (buffers.work), kept with the launch over the loop's arrays
    (``others()`` the shapes of the arrays that are not the work's); ``name`` with ``shapes`` must
    fix every shape. Returns the work and its arrays."""
    key = (name, cell.name, cell.source_hash, reverse, dtype, plan, shapes, project)

    def make(arrays):
        names = _WORK_ARRAYS[op]
        all_shapes = dict(others(), **{n: tuple(a.shape) for n, a in zip(names, arrays)})
        return _Launch(cell, op, reverse, plan, all_shapes, dtype, project)

    return buffers.work(key, shapes, dtype, make)


_WORK_ARRAYS = {FORWARD_OP: ("xp", "hs", "cs", "acts"),
                BACKWARD_OP: ("dh", "dc", "dG", "grec", "dan", "drh", "h_prev", "sums")}


@functools.lru_cache(maxsize=256)
def _first_rows(plan: Plan) -> list:
    """The first row of each of the plan's shards, once each (unit shards all start at row 0)."""
    return sorted({shard[0] for shard in plan.shards})


@functools.lru_cache(maxsize=256)
def _slots(plan: Plan, B: int) -> Tensor:
    """(B,) int64: at each shard's first row, the shard's place in the plan (its row of the backward
    loop's sums); zeros elsewhere."""
    slot = torch.zeros(B, dtype=torch.int64)
    for s, b0 in enumerate(_first_rows(plan)):
        slot[b0] = s
    return slot


def _weights_grad_in_loop(cell, plan: Plan) -> bool:
    """Whether the backward loop's row shards make dW_hh themselves (loops.shard_weights_grad),
    each its rows' share in the loops' own product, rather than torch.mm after the loop (at a small
    layer its call and threads cost more than the product; at a big one MKL's AVX2 kernels are
    slower than that product on AVX-512 machines); not with a second product,
    whose dW_hh is two products."""
    return plan.parties == 1 and cell.recurrent and cell.second is None


@functools.lru_cache(maxsize=32)
def _apart_mask(apart: tuple, G: int, H: int, dtype: torch.dtype) -> Tensor:
    """(G*H,) zeros over the gate blocks kept apart, ones elsewhere: the b_hh that folds into the
    input bias."""
    mask = torch.ones(G * H, dtype=dtype)
    for k in apart:
        mask[k * H:(k + 1) * H] = 0
    return mask


def _input_bias(cell, b_ih: Tensor | None, b_hh: Tensor | None, H: int) -> Tensor | None:
    """The bias folded into the input projection (None when there is none): b_ih + b_hh, but for
    the blocks of b_hh the cell keeps with the recurrent product (GRU's b_hn, which r scales)."""
    if b_hh is not None:
        b_hh = b_hh.detach()
    if cell.apart and b_hh is not None:
        mask = _apart_mask(cell.apart, cell.gates, H, b_hh.dtype)
        if b_ih is not None:
            return torch.addcmul(b_ih.detach(), b_hh, mask)
        b_hh = b_hh * mask
    if b_ih is None or b_hh is None:
        bias = b_ih if b_hh is None else b_hh
    else:
        bias = b_ih + b_hh
    return None if bias is None else bias.detach()


def _params(params: tuple, H: int, dtype: torch.dtype) -> Tensor:
    """The cell's unit parameters as one (P, H) tensor (the loops read them so)."""
    return torch.stack([p.detach() for p in params]).contiguous()


def _forward(cell, reverse: bool, lengths: Tensor | None, x: Tensor, h0: Tensor, c0: Tensor | None,
             W_ih: Tensor, W_hh: Tensor | None, b_ih: Tensor | None, b_hh: Tensor | None, params: tuple, store: bool):
    """The forward pass of :class:`FusedLayer` (see there) as a plain function, with autograd off.
    Returns out, h_n, c_n and what the backward pass needs (its activations only when store)."""
    B, T, I = x.shape
    H = h0.shape[1]
    G = cell.gates
    GH = G * H
    two = cell.states == 2
    # (No detach: autograd is off here, and compiled code reads the tensors by address.)
    x3 = x.contiguous()  # (B, T, I), read by the loop
    W_ih = W_ih.contiguous()
    W = W_hh.contiguous() if cell.recurrent else zeros((0, 0), x.dtype)
    if b_ih is not None:
        b_ih = b_ih.contiguous()
    if b_hh is not None:
        b_hh = b_hh.contiguous()
    lens = _lengths(lengths, B, T)
    plan = make_plan(B, H, GH, cell.recurrent)
    # Where one thread has every unit, each row shard's thread copies its initial states and, with one
    # input feature, projects its input (loops: forward): else torch does, here.
    start = plan.parties == 1
    project = start and I == 1
    h_init = h0.contiguous()
    c_init = c0.contiguous() if two else h_init
    zero = zeros((GH,), x.dtype)
    b_i = zero if b_ih is None else b_ih
    b_h = zero if b_hh is None else b_hh
    prm = _params(params, H, x.dtype) if params else zeros((0, H), x.dtype)
    # Where nothing will read the activations and the loops project x, they project each step's
    # row as they go into an xp of one step, in cache (an xp of every step is megabytes written and
    # read back, and the per-step time grew with T).
    steps = T if store or not project else 1
    shapes = ((B, steps, GH), (B, T + 1, H), (B, T + 1 if two else 0, H), (B, T if store else 1, cell.saved * H))
    def others():
        return {"W_hh": tuple(W.shape), "b_hh": (GH,), "lengths": (B,), "x": (B, T, I), "W_ih": (GH, I),
                "b_ih": (GH,), "h_init": (B, H), "c_init": (B, H), "params": tuple(prm.shape)}

    work, arrays = _work(("forward", I), cell, FORWARD_OP, reverse, plan, shapes, x.dtype, others, project)
    xp, hs, cs, acts = arrays
    if not project:
        x2 = x3.view(B * T, I)
        xp2 = xp.view(B * T, GH)
        bias = _input_bias(cell, b_ih, b_hh, H)
        if bias is None:
            torch.mm(x2, W_ih.t(), out=xp2)  # (B*T, G*H)
        elif I == 1:  # an outer product: addcmul measured ~1.7x faster than addmm's K = 1 GEMM
            torch.addcmul(bias, x2, W_ih.t(), out=xp2)
        else:
            torch.addmm(bias, x2, W_ih.t(), out=xp2)
    first, last = (T, 0) if reverse else (0, T)
    if not start:
        hs.select(1, first).copy_(h0)  # (select and narrow: cheaper than indexing, a call that counts)
        if two:
            cs.select(1, first).copy_(c0)
    work.extra([xp, hs, cs, acts, W, b_h, lens, x3, W_ih, b_i, h_init, c_init, prm])
    buffers.done(work)  # (a call not kept: its launch to the next call of the same shapes)
    # The results, views all made by as_strided: in a train step the first call of each kind of
    # torch operation costs several times a second one (its code gone from the caches).
    row, at = (T + 1) * H, hs.storage_offset()
    out = hs.as_strided((B, T, H), (row, H, 1), at + (0 if reverse else H))  # hs[:, :-1] reverse, else hs[:, 1:]
    if lengths is not None:
        alive = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
        out = out * alive.unsqueeze(2).to(out.dtype)
    h_n = hs.as_strided((B, H), (row, 1), at + last * H)  # hs[:, last]
    c_n = cs.as_strided((B, H), (row, 1), cs.storage_offset() + last * H) if two else None
    return out, h_n, c_n, (x3, xp, hs, cs, acts, W, lens, plan, prm)


class FusedLayer(torch.autograd.Function):
    """One layer-direction of ``cell``. Inputs x (B, T, I), h0, c0 (B, H) (c0 None but for a cell
    of two states), torch-layout weights and the cell's unit parameters; returns output (B, T, H)
    (zero past each sequence's length), h_n and c_n (B, H).

    The backward is the hand-written BPTT. Where the gradient's own graph is asked for
    (``create_graph=True``: a gradient penalty, a Hessian-vector product), it is the reference
    loop's instead, recomputed from the inputs (:func:`_recomputed_grads`): the same first-order
    numbers, and the graph through them that the loops do not build."""

    @staticmethod
    def forward(ctx, cell, reverse: bool, lengths: Tensor | None, x: Tensor, h0: Tensor, c0: Tensor | None,
                W_ih: Tensor, W_hh: Tensor | None, b_ih: Tensor | None, b_hh: Tensor | None, *params: Tensor):
        out, h_n, c_n, (x3, xp, hs, cs, acts, W, lens, plan, prm) = _forward(
            cell, reverse, lengths, x, h0, c0, W_ih, W_hh, b_ih, b_hh, params, store=True)
        # (Not the biases: the first-order backward does not read them, so one changed in place
        # since does not make its result wrong. The inputs themselves, for a recomputation.)
        ctx.save_for_backward(x3, xp, hs, cs, acts, W_ih, W, prm)
        ctx.set_materialize_grads(False)  # an unused output's gradient comes as None, not new zeros
        ctx.config = (cell, reverse, lens, plan)  # the backward splits the work the same way
        ctx.inputs = inputs = (lengths, x, h0, c0, W_ih, W_hh, b_ih, b_hh, *params)
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
    """The gradients of inputs (lengths, x, h0, c0, W_ih, W_hh, b_ih, b_hh, *params) for the outputs'
    ``grads`` as functions of the inputs and ``grads`` (a graph autograd can differentiate again):
    the layer run again on the reference loop, and its autograd's gradients."""
    from ..layers import run_reference

    cell, reverse = config
    lengths, x, h0, c0, *weights = inputs
    with torch.enable_grad():
        out, state = run_reference(cell.name, x, (h0,) if c0 is None else (h0, c0), tuple(weights), lengths,
                                   reverse)
        pairs = [(o, g) for o, g in zip((out, *state), grads) if g is not None]
        wanted = [t for t, n in zip(inputs, need) if n]
        got = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs],
                                       create_graph=True, allow_unused=True))
    return tuple(next(got) if n else None for n in need)


def _backward(config: tuple, saved: tuple, dout: Tensor | None, dh_n: Tensor | None, dc_n: Tensor | None,
              need: tuple) -> tuple:
    """The hand-written BPTT of one layer-direction: from the forward's ``config`` (cell, reverse,
    lens, plan) and ``saved`` arrays (x3, xp, hs, cs, acts, W_ih, W_hh, params) and the outputs'
    gradients (None where unused), the gradients (dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh, *dparams),
    each None where ``need`` (one flag each, in that order) says it is not wanted."""
    x3, xp, hs, cs, acts, W_ih, W_hh, prm = saved
    cell, reverse, lens, plan = config
    B, T, GH = xp.shape
    H = hs.shape[2]
    P = prm.shape[0]
    two = cell.states == 2
    dy = torch.zeros(B, T, H, dtype=hs.dtype) if dout is None else dout.contiguous()  # (B, T, H)
    dh_n = zeros((B, H), hs.dtype) if dh_n is None else dh_n.contiguous()
    dc_n = dh_n if not two else zeros((B, H), hs.dtype) if dc_n is None else dc_n.contiguous()
    second = cell.second is not None
    I = x3.shape[2]
    first_rows = _first_rows(plan)
    in_loop = need[4] and _weights_grad_in_loop(cell, plan)
    # h_prev, the states the loop copies for dW_hh's product; none where its shares read them in
    # hs, row by row, for a small W_hh (loops: shard_weights_grad), or where there is no W_hh
    copy = cell.recurrent and not (in_loop and GH * H * hs.element_size() <= DIRECT_BYTES)
    prev = (B, T, H) if copy else (0, 0, 0)
    shapes = ((B, H), (B, H) if two else (0, 0), (B, T, GH), (B, T, GH if cell.apart else 0),
              (B, H if second else 0), (B, H if second else 0), prev,
              (len(first_rows), 3 * GH + P * H + (GH * H if in_loop else 0)))
    slot = _slots(plan, B)
    def others():
        return {"dy": (B, T, H), "hs": tuple(hs.shape), "cs": tuple(cs.shape), "xp": (B, T, GH),
                "acts": tuple(acts.shape), "W_hh": tuple(W_hh.shape), "lengths": (B,), "x": (B, T, I),
                "dh_n": (B, H), "dc_n": (B, H), "slot": (B,), "params": tuple(prm.shape)}

    work, arrays = _work(("backward", I), cell, BACKWARD_OP, reverse, plan, shapes, hs.dtype, others)
    dh, dc, dG, grec, dan, drh, h_prev, sums = arrays
    if plan.parties > 1:  # (else each thread copies its rows)
        dh.copy_(dh_n)  # the loop turns them into the initial states' gradients
        if two:
            dc.copy_(dc_n)
    work.extra([dy, dh, dc, hs, cs, xp, acts, W_hh, lens, dG, grec, dan, drh, h_prev, x3, sums, dh_n, dc_n, slot, prm])
    buffers.done(work)
    # The shards' rows of sums (loops: backward), added up: the input bias's gradient, W_ih's where
    # I = 1, b_hh's, each (G*H,); the unit parameters'; then dW_hh where the loops made it. The
    # gradients are views of this one fresh tensor (the work's arrays stay with it), as contiguous
    # as their parameters (DDP checks a gradient's strides against its parameter's), made by
    # as_strided as the forward's results are (and sum for one shard too): one kind of torch call
    # fewer each.
    total = sums.sum(0)
    dx = dW_ih = dW_hh = None
    if need[0] or (need[3] and I > 1) or (need[4] and cell.recurrent and not in_loop):
        dG2 = dG.view(B * T, GH)  # (B*T, G*H)
        x2 = x3.view(B * T, I)
    # Written as the products that measured fast: with 2-8 input features, dG W_ih and dG^T x
    # take several times longer than the same products transposed.
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
        dW_hh = total.as_strided((GH, H), (H, 1), 3 * GH + P * H)
    elif need[4] and cell.recurrent:
        h_prev = h_prev.view(B * T, H)  # (B*T, H), hs[:, 1:] reverse, else hs[:, :-1] (the loop copies it)
        if second:
            # The last block's rows of W_hh multiply saved value 0 (r ⊙ h_prev), in acts.
            first = GH - H
            rh = acts.view(B * T, -1)[:, :H]
            dW_hh = torch.cat([torch.mm(dG2[:, :first].t(), h_prev), torch.mm(dG2[:, first:].t(), rh)])
        else:
            # Blocks kept apart: the product's gradient there is the loop's grec, not dG.
            dG_h = grec.view(B * T, GH) if cell.apart else dG2
            dW_hh = torch.mm(dG_h.t(), h_prev)
    dh0 = dh.clone() if need[1] else None  # (the work's own arrays stay with it)
    dc0 = dc.clone() if two and need[2] else None
    dparams = tuple(total.as_strided((H,), (1,), 3 * GH + i * H) if need[7 + i] else None for i in range(P))
    return (dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh, *dparams)


_apply = super(torch.autograd.Function, FusedLayer).apply  # (torch._C._FunctionBase.apply)


def _fits(cell, x, state, weights, lengths) -> bool:
    """Whether the arguments of :func:`run_fused` are what the loops read (see :func:`check_call`).
    (Written for speed: a call of a small layer is tens of microseconds.)"""
    try:
        B, T, I = x.shape
        h0 = state[0]
        B_, H = h0.shape
        dtype = x.dtype
        W_ih, W_hh, b_ih, b_hh = weights[0], weights[1], weights[2], weights[3]
        GH = cell.gates * H
        if not (B == B_ and B and T and H and x.is_cpu and (dtype is torch.float32 or dtype is torch.float64)
                and h0.dtype is dtype and h0.is_cpu and len(state) == cell.states
                and len(weights) == 4 + len(cell.params)
                and W_ih.shape == (GH, I) and W_ih.dtype is dtype and W_ih.is_cpu):
            return False
        if W_hh is None:
            if cell.recurrent:
                return False
        elif not cell.recurrent or W_hh.shape != (GH, H) or W_hh.dtype is not dtype or not W_hh.is_cpu:
            return False
        if len(state) == 2:
            c0 = state[1]
            if c0.shape != (B, H) or c0.dtype is not dtype or not c0.is_cpu:
                return False
        for b in (b_ih, b_hh):
            if b is not None and (b.shape != (GH,) or b.dtype is not dtype or not b.is_cpu):
                return False
        for p in weights[4:]:
            if p.shape != (H,) or p.dtype is not dtype or not p.is_cpu:
                return False
        return lengths is None or (lengths.shape == (B,) and lengths.dtype is torch.int64 and lengths.is_cpu)
    except (AttributeError, TypeError, ValueError, IndexError):
        return False


def check_call(cell, x, state, weights, lengths) -> None:
    """Raise a ShapeError naming the first argument of a :func:`run_fused` call that the loops cannot
    read, in the caller's terms: x (B, T, I) float32/float64 on the CPU, non-empty; state, one (B, H)
    tensor per state of the cell (h0, and c0 for LSTM); weights (W_ih (G*H, I), W_hh (G*H, H) (None
    for a cell without a recurrent matrix), b_ih, b_hh (G*H,) or None, then the cell's unit
    parameters (H,) each), all of x's dtype; lengths None or (B,) int64 on the CPU. (Contiguity is
    the engine's: it copies what is not.)"""
    if _fits(cell, x, state, weights, lengths):
        return
    G = cell.gates
    name = f"rnnkit's fused {cell.name} layer"

    def shape(t):
        return tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__

    if not isinstance(x, Tensor) or x.dim() != 3 or 0 in x.shape:
        raise ShapeError(f"{name} expects input of shape (batch, seq_len, input_size), non-empty; got {shape(x)}")
    if x.dtype not in DTYPES or not x.is_cpu:
        raise ShapeError(f"{name} runs float32/float64 CPU tensors; got input {x.dtype} on {x.device}")
    B, T, I = x.shape
    names = ("h0", "c0")[:cell.states]
    if not isinstance(state, (tuple, list)) or len(state) != cell.states:
        raise ShapeError(f"{name} expects the state as a tuple ({', '.join(names)})")
    if not isinstance(state[0], Tensor) or state[0].dim() != 2 or state[0].shape[1] == 0:
        raise ShapeError(f"{name} expects h0 of shape (batch, hidden_size); got {shape(state[0])}")
    H = state[0].shape[1]
    GH = G * H
    wanted = ["W_ih", "W_hh", "b_ih", "b_hh", *cell.params]
    if not isinstance(weights, (tuple, list)) or len(weights) != len(wanted):
        raise ShapeError(f"{name} expects weights ({', '.join(wanted)})")
    W_ih, W_hh, b_ih, b_hh, *params = weights
    if not cell.recurrent and W_hh is not None:
        raise ShapeError(f"{name} has no recurrent matrix: W_hh must be None")
    checks = [("W_ih", W_ih, (GH, I)), ("W_hh", W_hh, (GH, H) if cell.recurrent else None), ("b_ih", b_ih, (GH,)),
              ("b_hh", b_hh, (GH,)), *[(n, p, (H,)) for n, p in zip(cell.params, params)],
              *[(n, s, (B, H)) for n, s in zip(names, state)]]
    for n, t, want in checks:
        if want is None or (t is None and n.startswith("b_")):
            continue
        if not isinstance(t, Tensor) or tuple(t.shape) != want:
            raise ShapeError(f"{name} with input of shape {tuple(x.shape)} and h0 of shape {tuple(state[0].shape)} "
                             f"(hidden size {H}, {G} gate block{'s' if G > 1 else ''}) expects {n} of shape {want}; "
                             f"got {shape(t)}")
        if t.dtype != x.dtype or not t.is_cpu:
            raise ShapeError(f"{name} expects {n} of the input's dtype {x.dtype} on the CPU; got {t.dtype} on {t.device}")
    raise ShapeError(f"{name} expects lengths None or of shape ({B},), int64 on the CPU; got "
                     f"{shape(lengths)}{'' if not isinstance(lengths, Tensor) else f' {lengths.dtype} on {lengths.device}'}")


def run_fused(kind, x: Tensor, state: tuple, weights: tuple, lengths: Tensor | None = None,
              reverse: bool = False, nonlinearity: str = "tanh",
              reset_after: bool = True) -> tuple[Tensor, tuple]:
    """The fused engine, with the signature and results of :func:`rnnkit.layers.run_reference`:
    ``kind`` is torch.nn's cell ("rnn", "lstm", "gru", with ``nonlinearity`` and ``reset_after``), a
    registered cell's name or a :class:`rnnkit.kernels.cells.Cell`; weights (W_ih, W_hh, b_ih, b_hh,
    *unit parameters). The arguments are checked first (:func:`check_call`): a wrong shape or dtype
    raises a ShapeError instead of reaching the loops, which read arrays by address."""
    cell = _cell(kind, nonlinearity, reset_after)
    check_call(cell, x, state, weights, lengths)
    W_ih, W_hh, b_ih, b_hh, *params = weights
    two = cell.states == 2
    c0 = state[1] if two else None
    args = (cell, reverse, lengths, x, state[0], c0, W_ih, W_hh, b_ih, b_hh, *params)
    if torch.is_grad_enabled() and (W_ih.requires_grad or x.requires_grad or any(
            t is not None and t.requires_grad for t in (W_hh, b_ih, b_hh, *state, *params))):
        # autograd.Function.apply's own C++ part where no functorch transform is on: the Python
        # wrapper around it only unwraps functorch's tensors (a cost in a small layer's call).
        apply = FusedLayer.apply if torch._C._are_functorch_transforms_active() else _apply
        out, h_n, c_n = apply(*args)
    else:
        # No gradient wanted: skip the autograd.Function (its cost per call) and the stored activations
        # (needs_input_grad inside it is set under torch.no_grad too).
        out, h_n, c_n, _ = _forward(*args[:10], tuple(params), store=False)
    return out, ((h_n, c_n) if two else (h_n,))


@functools.lru_cache(maxsize=64)
def _builtin(kind: str, nonlinearity: str, reset_after: bool):
    return cells.builtin(kind, nonlinearity, reset_after)


def _cell(kind, nonlinearity: str = "tanh", reset_after: bool = True):
    """The cell a run_fused call names (see there)."""
    if isinstance(kind, cells.Cell):
        return kind
    if kind in ("rnn", "lstm", "gru"):
        return _builtin(kind, nonlinearity, reset_after)
    try:
        return cells.get(kind)
    except KeyError:
        raise ShapeError(f"rnnkit's fused engine has no cell {kind!r} (registered: {', '.join(cells.REGISTRY)})") from None
