"""Sequence layers: the one reference time loop, stacking, directions, dropout and lengths.

:class:`RNN`, :class:`LSTM` and :class:`GRU` are drop-in replacements of the torch.nn layers: the same
constructor, forward signature, input/output shapes (batched, unbatched, PackedSequence) and parameter
names, so ``state_dict`` moves between them unchanged. Each call is run by an *engine*: the fused
engine or the reference loop (a plain loop over :mod:`rnnkit.cells`, held here), each one layer and
direction at a time with the signature of :func:`run_reference`, or torch's own op for the whole
stack (``engine="torch"``); :func:`choose_engine` picks it for each call.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, _VF, nn
from torch.autograd import forward_ad
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import cells, kernels, triton_engine
from .errors import ConfigError, ShapeError
from .kernels import cells as kernel_cells

State = tuple  # (h,) for RNN and GRU, (h, c) for LSTM (and a cell of two states); each (B, H)
# (W_ih, W_hh, b_ih, b_hh[, W_hr]); the biases may be None; W_hr: LSTM with proj_size. A cell of the
# fused engine's registry: (W_ih, W_hh, b_ih, b_hh, *its unit parameters), W_hh None where it has no
# recurrent matrix.
Weights = tuple


def cell_of(kind, nonlinearity: str = "tanh", reset_after: bool = True) -> kernel_cells.Cell:
    """The cell a layer runs (rnnkit.kernels.cells): torch.nn's cell for "rnn", "lstm", "gru" (with
    ``nonlinearity`` and ``reset_after``), else a registered cell's name, or the Cell itself."""
    if kind in ("rnn", "lstm", "gru"):
        return kernel_cells.builtin(kind, nonlinearity, reset_after)
    try:
        return kernel_cells.get(kind)
    except KeyError:
        raise ConfigError(f"unknown cell {kind!r} (registered: {', '.join(kernel_cells.REGISTRY)})") from None


def step_function(kind, nonlinearity: str = "tanh", reset_after: bool = True) -> Callable:
    """The cell step as ``step(x (B, I), state, *weights) -> state`` with state a tuple: the cell's
    reference equations (rnnkit.cells)."""
    return cell_of(kind, nonlinearity, reset_after).reference


def run_reference(kind, x: Tensor, state: State, weights: Weights,
                  lengths: Tensor | None = None, reverse: bool = False,
                  nonlinearity: str = "tanh", reset_after: bool = True) -> tuple[Tensor, State]:
    """Run one layer in one direction over a batch-first sequence: the reference time loop.

    kind: as :func:`cell_of` takes it. x (B, T, I); state: tuple of (B, H) (h (B, P) with LSTM's
    projection); weights (W_ih, W_hh, b_ih, b_hh[, W_hr]), or a registered cell's (see Weights).
    lengths (B,) int64 on the CPU, or None when every sequence has length T: a sequence's state
    stops changing after its last step, its outputs past it are zero, and the reverse direction
    starts at its last step.
    Returns (output (B, T, H), final state tuple).
    """
    step = step_function(kind, nonlinearity, reset_after)
    T = x.shape[1]
    outputs: list[Tensor] = [None] * T  # type: ignore[list-item]
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        new = step(x[:, t], state, *weights)
        if lengths is None:
            state = new
            outputs[t] = new[0]
        else:
            alive = (lengths > t).to(x.device).unsqueeze(1)  # (B, 1)
            state = tuple(torch.where(alive, n, s) for n, s in zip(new, state))
            outputs[t] = torch.where(alive, new[0], torch.zeros_like(new[0]))
    if T == 0:
        return x.new_zeros(x.shape[0], 0, state[0].shape[-1]), state
    return torch.stack(outputs, dim=1), state  # (B, T, H)


# "auto": the fused engine wherever it serves this call (see :func:`special_mode`), else torch's own
# fused op (cuDNN on a GPU) wherever that runs the layer, else on a GPU the Triton kernels
# (rnnkit.triton_engine) wherever Triton is installed and runs the cell, else the reference loop.
# "fused", "torch", "triton": that engine or a ConfigError; "reference": always the loop above.
ENGINES = ("auto", "fused", "torch", "triton", "reference")


def special_mode(x: Tensor) -> str | None:
    """What this call runs under beyond eager autograd, as far as it decides the engine: None, or
    "compile" (torch.compile, torch.export, fake tensors: the fused engine as one torch operator,
    :mod:`rnnkit.kernels.op`), "onnx" (torch.onnx.export, where no rnnkit translation is in use: the
    aten ops that the exporter maps), "torch.func" (functorch transforms, forward AD: the
    reference loop's plain ops), "jit trace" or "autocast" (where torch's op decides the dtype, as
    torch.nn's does)."""
    if torch.compiler.is_compiling() or type(x) is not Tensor:
        if _in_onnx_export() and not kernels.op.TRANSLATED:
            return "onnx"
        return "compile"
    if torch._C._are_functorch_transforms_active() or forward_ad._current_level >= 0:
        return "torch.func"
    if torch._C._get_tracing_state() is not None:
        return "jit trace"
    if torch._C._is_any_autocast_enabled() and torch.is_autocast_enabled(x.device.type):
        return "autocast"
    return None


def _shape(shape) -> str:
    """A shape as the errors show it: (3, 5, 2), or what else describes the input."""
    return str(tuple(shape)) if isinstance(shape, tuple) else str(shape)


def _in_onnx_export() -> bool:
    """torch.onnx.is_in_onnx_export(), also where torch.compile's tracer reads it as False (the
    exporter's capture with torch.export(strict=True)) but the exporter's own flag is set."""
    try:
        from torch.onnx._internal.exporter import _flags
    except ImportError:  # another torch: only the public answer
        return torch.onnx.is_in_onnx_export()
    return _flags._is_onnx_exporting or torch.onnx.is_in_onnx_export()


def choose_engine(engine: str, x: Tensor, lengths: Tensor | None, torch_serves: bool,
                  shape: tuple | str | None = None, fused_serves: bool = True, op_serves: bool = True,
                  cell=None, projection: bool = False) -> str:
    """"fused", "op" (the fused engine as a torch operator, where a tracer or compiler runs the
    layer), "torch", "triton" or "reference": the engine that runs this call. ``torch_serves``:
    whether torch's op runs this layer (not GRU reset_after=False, nor CustomRNN, nor the registry's
    other cells); ``fused_serves``: whether the fused engine runs its configuration (not LSTM with
    proj_size); ``op_serves``: whether its torch operator runs the cell (rnnkit.kernels.op.serves);
    ``cell`` (a rnnkit.kernels.cells Cell) and ``projection`` (LSTM's proj_size): what the Triton
    engine is asked to run (rnnkit.triton_engine.serves); ``shape``: the caller's input shape (or a
    description of a PackedSequence), for the errors."""
    if engine == "triton":
        if not triton_engine.serves(cell, x, lengths, projection):
            raise ConfigError(triton_engine.refusal(cell, x, lengths, projection))
        mode = special_mode(x)
        if mode is not None:
            raise ConfigError(f"engine='triton' cannot run under {mode}, whose gradients or graph need torch's "
                              f"own ops (use engine='auto', which takes them there)")
        return "triton"
    if not op_serves and (torch.compiler.is_compiling() or type(x) is not Tensor):
        if engine == "fused":
            raise ConfigError("engine='fused' cannot run this cell under torch.compile or torch.export (the "
                              "operator runs cells with a recurrent matrix and no unit parameters); use "
                              "engine='auto' or 'reference'")
        return "reference"
    if kernels.op.TRANSLATED and fused_serves and torch.compiler.is_compiling() and kernels.supports(x, lengths):
        return "op"  # whatever the engine: rnnkit.export translates the fused operator to ONNX's
    if engine == "reference":
        return "reference"
    if engine == "torch":
        if not torch_serves:
            raise ConfigError("engine='torch' runs the layers torch.nn has (RNN, LSTM, GRU with "
                              "reset_after=True); use engine='auto' or 'reference' for this one")
        return "torch"
    mode = special_mode(x)
    if mode in (None, "compile") and fused_serves and kernels.supports(x, lengths):
        return "fused" if mode is None else "op"
    if engine == "fused":
        if not fused_serves:
            raise ConfigError("engine='fused' does not run LSTM with proj_size (use engine='auto', "
                              "'torch' or 'reference')")
        if not kernels.supports(x, lengths):
            raise ConfigError(
                f"engine='fused' runs non-empty float32/float64 CPU tensors with int64 CPU lengths; got "
                f"{x.dtype} on {x.device}, input of shape {_shape(x.shape if shape is None else shape)} "
                f"(use engine='auto' to fall back)")
        if mode == "onnx":
            raise ConfigError("engine='fused' cannot run inside torch.onnx.export, which has no translation "
                              "of its operator (use rnnkit.export.to_onnx, or engine='auto')")
        raise ConfigError(f"engine='fused' cannot run under {mode}, whose gradients or graph need "
                          f"torch's own ops (use engine='auto', which takes them there)")
    if mode == "torch.func":  # plain ops: torch's RNN ops have no batching rule for vmap
        return "reference"
    if torch_serves:
        return "torch"
    return "triton" if mode is None and triton_engine.serves(cell, x, lengths, projection) else "reference"


def pick_engine(engine: str, kind: str, x: Tensor, lengths: Tensor | None) -> Callable:
    """The function that runs one layer-direction of a layer torch has no op for (CustomRNN), with
    the signature of :func:`run_reference`."""
    return _RUN[choose_engine(engine, x, lengths, torch_serves=False, cell=cell_of(kind))]()


# engine -> its function of one layer-direction (looked up when called: run_fused loads numba,
# run_triton Triton)
_RUN = {"fused": lambda: kernels.run_fused, "op": lambda: kernels.op.run_op, "reference": lambda: run_reference,
        "triton": lambda: triton_engine.run_triton}


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r} (use one of: {', '.join(ENGINES)})")


@functools.lru_cache(maxsize=64)
def autocast_dtype(op: str, device_type: str, fast: torch.dtype, dtype: torch.dtype) -> torch.dtype:
    """The dtype of torch's ``op`` ("lstm", "gru", "rnn_tanh") output under autocast to ``fast`` on
    ``device_type`` for ``dtype`` input (autocast casts some recurrent ops and not others, per device):
    asked of torch once, on a tiny input."""
    G = {"lstm": 4, "gru": 3}.get(op, 1)
    w = [torch.zeros(G, 1, dtype=dtype, device=device_type), torch.zeros(G, 1, dtype=dtype, device=device_type)]
    h = torch.zeros(1, 1, 1, dtype=dtype, device=device_type)
    try:
        with torch.no_grad(), torch.autocast(device_type, dtype=fast):
            out = getattr(_VF, op)(torch.zeros(1, 1, 1, dtype=dtype, device=device_type),
                                   (h, h) if op == "lstm" else h, w, False, 1, 0.0, False, False, False)
        return out[0].dtype
    except RuntimeError:  # an op this device's autocast does not know
        return dtype


class RNNBase(nn.Module):
    """Shared machinery of :class:`RNN`, :class:`LSTM`, :class:`GRU` and :class:`Recurrent` (see
    torch.nn.RNNBase)."""

    kind = ""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 *, nonlinearity: str = "tanh", reset_after: bool = True, proj_size: int = 0,
                 engine: str = "auto", device=None, dtype=None, cell=None) -> None:
        super().__init__()
        cells.check_sizes(input_size, hidden_size)
        if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 1:
            raise ConfigError(f"num_layers must be a positive integer, got {num_layers!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1:
            raise ConfigError(f"dropout must be a number in [0, 1], got {dropout!r}")
        if not isinstance(proj_size, int) or isinstance(proj_size, bool) or not 0 <= proj_size < hidden_size:
            raise ConfigError(f"proj_size must be an integer in [0, hidden_size={hidden_size}), got {proj_size!r}")
        cells.check_nonlinearity(nonlinearity)
        check_engine(engine)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.nonlinearity = nonlinearity
        self.reset_after = bool(reset_after)
        self._cell = cell_of(self.kind if cell is None else cell, nonlinearity, reset_after)
        # torch's op (torch._VF) that runs this layer, None where torch has none
        self._torch_op = (None if cell is not None else ("rnn_tanh" if nonlinearity == "tanh" else "rnn_relu")
                          if self.kind == "rnn" else self.kind if self.reset_after else None)
        self._op_serves = kernels.op.serves(self._cell)
        self._two = self._cell.states == 2  # h and c (LSTM's hx and h_n are pairs)
        self.proj_size = proj_size  # LSTM only: h = W_hr (o ⊙ tanh(c)), proj_size wide
        self.engine = engine
        factory = {"device": device, "dtype": dtype}
        G = self._cell.gates
        out = proj_size or hidden_size  # the width of h
        self._weight_names = [self._names(layer, d) for layer in range(num_layers) for d in range(self.num_directions)]
        # Registered in torch.nn's order, so state_dict keys come out in the same order too.
        for layer in range(num_layers):
            for direction in range(self.num_directions):
                layer_in = input_size if layer == 0 else out * self.num_directions
                ih, hh, bih, bhh, *more = self._weight_names[layer * self.num_directions + direction]
                self.register_parameter(ih, nn.Parameter(torch.empty(G * hidden_size, layer_in, **factory)))
                if hh is not None:
                    self.register_parameter(hh, nn.Parameter(torch.empty(G * hidden_size, out, **factory)))
                if bias:
                    self.register_parameter(bih, nn.Parameter(torch.empty(G * hidden_size, **factory)))
                    self.register_parameter(bhh, nn.Parameter(torch.empty(G * hidden_size, **factory)))
                if proj_size:
                    self.register_parameter(more[0], nn.Parameter(torch.empty(proj_size, hidden_size, **factory)))
                elif more:  # the cell's unit parameters
                    for name in more:
                        self.register_parameter(name, nn.Parameter(torch.empty(hidden_size, **factory)))
        self.reset_parameters()
        self.flatten_parameters()

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _names(self, layer: int, direction: int) -> tuple:
        """The parameter names of one layer and direction: (W_ih, W_hh, b_ih, b_hh), then W_hr with
        proj_size, or the cell's unit parameters; W_hh None for a cell without a recurrent matrix."""
        suffix = ("", "_reverse")[direction]
        names = (f"weight_ih_l{layer}{suffix}", f"weight_hh_l{layer}{suffix}" if self._cell.recurrent else None,
                 f"bias_ih_l{layer}{suffix}", f"bias_hh_l{layer}{suffix}")
        if self.proj_size:
            return names + (f"weight_hr_l{layer}{suffix}",)
        return names + tuple(f"{name}_l{layer}{suffix}" for name in self._cell.params)

    def layer_weights(self, layer: int, direction: int) -> Weights:
        """(W_ih, W_hh, b_ih, b_hh) of one layer and direction, and W_hr with proj_size, or the cell's
        unit parameters; biases None when bias=False (see Weights)."""
        # (names made once per layer: looked up on every call)
        names = self._weight_names[layer * self.num_directions + direction]
        # Looked up on every call: straight from the dict, but where a parametrization or bias=False
        # left a name out of it (getattr then finds the parametrized weight, or None).
        params = self._parameters
        try:
            if len(names) == 4:
                return params[names[0]], params[names[1]], params[names[2]], params[names[3]]
            return tuple(None if n is None else params[n] for n in names)
        except KeyError:
            return tuple(None if n is None else getattr(self, n, None) for n in names)

    @property
    def all_weights(self) -> list[list[Tensor]]:
        return [[w for w in self.layer_weights(layer, d) if w is not None]
                for layer in range(self.num_layers) for d in range(self.num_directions)]

    def _flat_weights(self, weights: list) -> list[Tensor]:
        """The layer-directions' weights in the order of torch's ops: W_ih, W_hh, b_ih, b_hh, W_hr."""
        return [w for ws in weights for w in ws if w is not None]

    def reset_parameters(self) -> None:
        cells.init_uniform(self, self.hidden_size)

    def flatten_parameters(self) -> None:
        """Lay the weights out in one cuDNN buffer, as torch.nn does, so that torch's op does not copy
        them on every call: on a CUDA device with cuDNN, where torch's op serves the layer; elsewhere
        nothing to do."""
        op = self._torch_op
        weights = self._flat_weights([self.layer_weights(l, d) for l in range(self.num_layers)
                                      for d in range(self.num_directions)])
        first = weights[0]
        if (op is None or any(not isinstance(w, nn.Parameter) or w.dtype != first.dtype or not w.is_cuda
                              or not torch.backends.cudnn.is_acceptable(w) for w in weights)
                or len({w.data_ptr() for w in weights}) != len(weights)):
            return
        import torch.backends.cudnn.rnn as cudnn_rnn

        with torch.cuda.device_of(first), torch.no_grad():
            if torch._use_cudnn_rnn_flatten_weight():
                torch._cudnn_rnn_flatten_weight(
                    weights, (4 if self.bias else 2) + (1 if self.proj_size else 0), self.input_size,
                    cudnn_rnn.get_cudnn_mode(op.upper()), self.hidden_size, self.proj_size,
                    self.num_layers, self.batch_first, bool(self.bidirectional))

    def _apply(self, fn, recurse=True):
        result = super()._apply(fn, recurse)
        self.flatten_parameters()  # (.to(), .cuda(): new tensors, laid out again)
        return result

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.kind == "rnn" and self.nonlinearity != "tanh":
            s += f", nonlinearity={self.nonlinearity!r}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        if self.kind == "gru" and not self.reset_after:
            s += ", reset_after=False"
        if self.engine != "auto":
            s += f", engine={self.engine!r}"
        return s

    # ---- forward -------------------------------------------------------------------------------

    def _check_hx(self, hx, B: int, batched: bool, like: Tensor, autocast: bool) -> tuple:
        """hx ((L*D, B, H) or unbatched (L*D, H); a pair for LSTM and a cell of two states) checked,
        as a tuple of batched (L*D, B, ·) tensors: h is proj_size wide with a projection."""
        LD = self.num_layers * self.num_directions
        if self._two:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise ShapeError(f"{type(self).__name__} expects hx as a tuple (h_0, c_0)")
            parts = tuple(hx)
        else:
            if not isinstance(hx, Tensor):
                raise ShapeError(f"{type(self).__name__} expects hx as a tensor, got {type(hx).__name__}")
            parts = (hx,)
        for name, p, width in zip(("h_0", "c_0"), parts, (self.proj_size or self.hidden_size, self.hidden_size)):
            want = (LD, B, width) if batched else (LD, width)
            if not isinstance(p, Tensor) or tuple(p.shape) != want:
                size = "proj_size" if width == self.proj_size else "hidden_size"
                raise ShapeError(
                    f"{type(self).__name__} expects {name} of shape {want} "
                    f"(num_layers*num_directions, {'batch, ' if batched else ''}{size}), "
                    f"got {tuple(p.shape) if isinstance(p, Tensor) else type(p).__name__}"
                )
            if p.dtype != like.dtype and not autocast:  # engines differ here (cast or fail), so say it once
                raise ShapeError(f"{name} dtype {p.dtype} does not match the input's {like.dtype}")
        return parts if batched else tuple(p.unsqueeze(1) for p in parts)  # (L*D, B, ·)

    def _initial_state(self, hx: tuple | None, B: int, like: Tensor) -> list[State]:
        """Per layer-direction state tuples of (B, ·) tensors, from the checked hx or zeros."""
        LD = self.num_layers * self.num_directions
        if hx is None:  # one zero state that every layer-direction reads (engines never write it)
            zero = _zeros((B, self.hidden_size), like)
            if not self._two:
                return [(zero,)] * LD
            h = _zeros((B, self.proj_size), like) if self.proj_size else zero
            return [(h, zero)] * LD
        return [tuple(p[k] for p in hx) for k in range(LD)]

    def forward(self, input, hx=None):
        """input (T, B, I), or (B, T, I) with batch_first, or unbatched (T, I), or a PackedSequence.

        Returns (output, h_n) — (output, (h_n, c_n)) for LSTM — shaped as torch.nn's.
        """
        packed = isinstance(input, PackedSequence)
        if packed:
            shape = f"PackedSequence of data {tuple(input.data.shape)}"
            batched = True
            if input.data.dim() != 2:
                raise ShapeError(f"{type(self).__name__} expects a PackedSequence of (sum of lengths, "
                                 f"input_size) data; got {shape}")
            features, dtype, B = input.data.shape[-1], input.data.dtype, int(input.batch_sizes[0])
        else:
            if not isinstance(input, Tensor) or input.dim() not in (2, 3):
                shape = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
                raise ShapeError(
                    f"{type(self).__name__} expects input of shape (seq_len, batch, input_size), "
                    f"(batch, seq_len, input_size) with batch_first=True, or unbatched "
                    f"(seq_len, input_size); got {shape}"
                )
            shape = input.shape  # (for the errors: the caller's shape)
            batched = input.dim() == 3
            features, dtype = input.shape[-1], input.dtype
            B = input.shape[0 if self.batch_first else 1] if batched else 1
        if features != self.input_size:
            raise ShapeError(
                f"{type(self).__name__} was built for input_size={self.input_size}, but the input "
                f"of shape {_shape(shape)} has {features} features"
            )
        weights = [self.layer_weights(layer, d) for layer in range(self.num_layers)
                   for d in range(self.num_directions)]
        first = weights[0][0]
        autocast = torch._C._is_any_autocast_enabled() and torch.is_autocast_enabled(
            (input.data if packed else input).device.type)
        if dtype != first.dtype and not autocast:
            raise ShapeError(
                f"input dtype {dtype} does not match the parameters' {first.dtype} "
                f"(convert one of them, e.g. model.to({dtype}))"
            )
        if hx is not None:
            hx = self._check_hx(hx, B, batched, input.data if packed else input, autocast)
        if packed:
            x, lengths = pad_packed_sequence(input, batch_first=True)  # (B, T, I), original order
        else:
            x = input.unsqueeze(0) if not batched else input if self.batch_first else input.transpose(0, 1)  # (B, T, I)
            lengths = None
        op = self._torch_op
        if autocast and (self.engine == "torch" or (self.engine == "auto" and op is not None)):
            autocast = False  # torch's op casts as torch.nn's does
        if not autocast:
            engine = choose_engine(self.engine, x, lengths, op is not None, shape, fused_serves=not self.proj_size,
                                   op_serves=self._op_serves, cell=self._cell,
                                   projection=bool(self.proj_size))
            if engine == "torch":
                return self._forward_torch(op, input, hx, weights, packed, batched)
            output, h_n = self._run_layers(engine, x, lengths, hx, weights)
        else:  # as torch.nn: the recurrence in the dtype torch's op gives under this autocast
            device_type = x.device.type
            cast = autocast_dtype(op or "gru", device_type, torch.get_autocast_dtype(device_type), first.dtype)
            if self.engine == "fused" and cast not in kernels.DTYPES:
                raise ConfigError(f"engine='fused' runs float32/float64, and under this autocast torch.nn "
                                  f"computes {type(self).__name__} in {cast} (use engine='auto' or 'torch')")
            x = x.to(cast)
            weights = [tuple(None if w is None else w.to(cast) for w in ws) for ws in weights]
            hx = None if hx is None else tuple(h.to(cast) for h in hx)
            with torch.autocast(device_type, enabled=False):
                engine = choose_engine(self.engine, x, lengths, False, shape, fused_serves=not self.proj_size,
                                       op_serves=self._op_serves, cell=self._cell,
                                       projection=bool(self.proj_size))
                output, h_n = self._run_layers(engine, x, lengths, hx, weights)
        if packed:
            output = _repack(output, lengths, input)
        elif not batched:
            output = output.squeeze(0)  # (T, D*H)
            h_n = tuple(h.squeeze(1) for h in h_n)  # (L*D, H)
        elif not self.batch_first:
            output = output.transpose(0, 1)  # (T, B, D*H)
        return output, (h_n if self._two else h_n[0])

    def _run_layers(self, engine: str, x: Tensor, lengths: Tensor | None, hx: tuple | None,
                    weights: list) -> tuple[Tensor, tuple]:
        """The stack of layers over x (B, T, I), one layer-direction at a time: the output (B, T, D*H)
        and the final states, each (L*D, B, ·)."""
        run = _RUN[engine]()
        states = self._initial_state(hx, x.shape[0], x)
        finals: list[State] = []
        layer_input = x
        for layer in range(self.num_layers):
            outs = []
            for d in range(self.num_directions):
                k = layer * self.num_directions + d
                out, final = run(self._cell, layer_input, states[k], weights[k], lengths, reverse=d == 1)
                outs.append(out)
                finals.append(final)
            layer_input = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)  # (B, T, D*H)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        if len(finals) == 1:  # a view instead of a copy: one layer, one direction
            h_n = tuple(f.unsqueeze(0) for f in finals[0])  # (1, B, H)
        else:
            h_n = tuple(torch.stack([f[k] for f in finals], dim=0) for k in range(len(finals[0])))  # (L*D, B, H)
        return layer_input, h_n

    def _forward_torch(self, op: str, input, hx: tuple | None, weights: list, packed: bool, batched: bool):
        """The torch engine: torch's own op for the whole stack (what torch.nn's forward calls, cuDNN
        on a GPU), with this layer's weights in its order."""
        data = input.data if packed else input if batched else input.unsqueeze(1 - self.batch_first)
        LD = self.num_layers * self.num_directions
        B = int(input.batch_sizes[0]) if packed else data.shape[0 if self.batch_first else 1]
        if hx is None:
            widths = (self.proj_size or self.hidden_size, self.hidden_size)[:2 if self.kind == "lstm" else 1]
            hx = tuple(torch.zeros(LD, B, w, dtype=data.dtype, device=data.device) for w in widths)
        elif packed and input.sorted_indices is not None:
            hx = tuple(h.index_select(1, input.sorted_indices) for h in hx)  # the batch in sorted order
        state = hx if self.kind == "lstm" else hx[0]
        flat = self._flat_weights(weights)
        args = (flat, self.bias, self.num_layers, self.dropout, self.training, self.bidirectional)
        if packed:
            result = getattr(_VF, op)(data, input.batch_sizes, state, *args)
        else:
            result = getattr(_VF, op)(data, state, *args, self.batch_first)
        output, h_n = result[0], tuple(result[1:])
        if packed:
            output = PackedSequence(output, input.batch_sizes, input.sorted_indices, input.unsorted_indices)
            if input.unsorted_indices is not None:
                h_n = tuple(h.index_select(1, input.unsorted_indices) for h in h_n)
        elif not batched:
            output = output.squeeze(1 - self.batch_first)  # (T, D*H)
            h_n = tuple(h.squeeze(1) for h in h_n)  # (L*D, H)
        return output, (h_n if self.kind == "lstm" else h_n[0])


def _zeros(shape: tuple, like: Tensor) -> Tensor:
    """Zeros of ``like``'s dtype and device: made once per shape (kernels.zeros), but new where a
    compiler or fake tensors run the layer (symbolic sizes)."""
    if torch.compiler.is_compiling() or type(like) is not Tensor:
        return like.new_zeros(shape)
    return kernels.zeros(shape, like.dtype, like.device)


def _repack(padded: Tensor, lengths: Tensor, like: PackedSequence) -> PackedSequence:
    """Pack a batch-first padded output (original batch order) with the input's own ordering, so the
    packed data lines up with torch.nn's element for element."""
    if like.sorted_indices is not None:
        padded = padded.index_select(0, like.sorted_indices)  # (B, T, H) in sorted order
        lengths = lengths.index_select(0, like.sorted_indices.cpu())
    data = pack_padded_sequence(padded, lengths, batch_first=True, enforce_sorted=True).data
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)


class RNN(RNNBase):
    """Elman RNN, drop-in for ``torch.nn.RNN``: h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh).

    Arguments as torch.nn.RNN (input_size, hidden_size, num_layers=1, nonlinearity='tanh', bias=True,
    batch_first=False, dropout=0.0, bidirectional=False), plus ``engine``.
    """

    kind = "rnn"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, engine: str = "auto",
                 device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         nonlinearity=nonlinearity, engine=engine, device=device, dtype=dtype)


class LSTM(RNNBase):
    """LSTM, drop-in for ``torch.nn.LSTM`` (gate order i, f, g, o; equations in rnnkit.cells.lstm).

    forward(input, (h_0, c_0)=None) -> (output, (h_n, c_n)). With ``proj_size`` P > 0, as torch.nn's:
    h = W_hr (o ⊙ tanh(c)) with W_hr (P, H) (``weight_hr_l{k}``), so h, h_0, h_n and the output are P
    wide (c stays H wide) and W_hh is (4H, P).
    """

    kind = "lstm"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, engine: str = "auto", device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size=proj_size, engine=engine, device=device, dtype=dtype)


class GRU(RNNBase):
    """GRU, drop-in for ``torch.nn.GRU`` (gate order r, z, n; equations in rnnkit.cells.gru).

    ``reset_after=True`` (default) is torch.nn's candidate n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn));
    ``False`` is Cho et al.'s n = tanh(W_in x + b_in + W_hn (r ⊙ h) + b_hn), same weights and layout.
    """

    kind = "gru"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 reset_after: bool = True, engine: str = "auto", device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         reset_after=reset_after, engine=engine, device=device, dtype=dtype)


class Recurrent(RNNBase):
    """A layer of any cell of the fused engine's registry (rnnkit.kernels.cells): the cells torch.nn
    lacks (``"peephole_lstm"``, ``"indrnn"``) or one a user registered (a name or the Cell).

    Arguments as torch.nn.RNN's (input_size, hidden_size, num_layers=1, bias=True,
    batch_first=False, dropout=0.0, bidirectional=False), plus ``engine`` ("auto", "fused" or
    "reference": torch has no op for these). Parameters ``weight_ih_l{k}`` (G*H, I),
    ``weight_hh_l{k}`` (G*H, H) where the cell has a recurrent matrix, ``bias_ih_l{k}``,
    ``bias_hh_l{k}`` (G*H,), and ``{name}_l{k}`` (H,) for each of the cell's unit parameters
    (``_reverse`` for the reverse direction), all U(-1/sqrt(H), 1/sqrt(H)). forward(input, hx=None)
    as torch.nn's; hx and h_n a pair (h, c) for a cell of two states, as LSTM's.
    """

    def __init__(self, cell, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 engine: str = "auto", device=None, dtype=None) -> None:
        self.kind = cell_of(cell).name
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         engine=engine, device=device, dtype=dtype, cell=cell)

    def extra_repr(self) -> str:
        return f"{self.kind!r}, " + super().extra_repr()
