"""Sequence layers: the one reference time loop, stacking, directions, dropout and lengths.

:class:`RNN`, :class:`LSTM` and :class:`GRU` are drop-in replacements of the torch.nn layers: the same
constructor, forward signature, input/output shapes (batched, unbatched, PackedSequence) and parameter
names, so ``state_dict`` moves between them unchanged. Each layer and direction is run by an *engine*,
a function with the signature of :func:`run_reference`; this module holds the reference engine (a plain
loop over :mod:`rnnkit.cells`) and picks the engine for each call.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import cells, kernels
from .errors import ConfigError, ShapeError

State = tuple  # (h,) for RNN and GRU, (h, c) for LSTM; each (B, H)
Weights = tuple  # (W_ih, W_hh, b_ih, b_hh); the biases may be None


def step_function(kind: str, nonlinearity: str = "tanh", reset_after: bool = True) -> Callable:
    """The cell step as ``step(x (B, I), state, *weights) -> state`` with state a tuple."""
    if kind == "rnn":
        return lambda x, s, *w: (cells.elman(x, s[0], *w, nonlinearity=nonlinearity),)
    if kind == "gru":
        return lambda x, s, *w: (cells.gru(x, s[0], *w, reset_after=reset_after),)
    return lambda x, s, *w: cells.lstm(x, s, *w)


def run_reference(kind: str, x: Tensor, state: State, weights: Weights,
                  lengths: Tensor | None = None, reverse: bool = False,
                  nonlinearity: str = "tanh", reset_after: bool = True) -> tuple[Tensor, State]:
    """Run one layer in one direction over a batch-first sequence: the reference time loop.

    x (B, T, I); state: tuple of (B, H); weights (W_ih, W_hh, b_ih, b_hh).
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


# "auto": the fused engine wherever it runs this input, else the reference loop; "fused": the fused
# engine or a ConfigError; "reference": always the loop above.
ENGINES = ("auto", "fused", "reference")


def pick_engine(engine: str, kind: str, x: Tensor, lengths: Tensor | None) -> Callable:
    """The function that runs one layer-direction for this call (see :func:`run_reference`)."""
    if engine == "reference":
        return run_reference
    if kernels.supports(x, lengths):
        return kernels.run_fused
    if engine == "fused":
        raise ConfigError(
            f"engine='fused' runs non-empty float32/float64 CPU tensors with int64 CPU lengths; got "
            f"{x.dtype} on {x.device}, shape {tuple(x.shape)} (use engine='auto' to fall back to the "
            f"reference loop)"
        )
    return run_reference


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r} (use one of: {', '.join(ENGINES)})")


class RNNBase(nn.Module):
    """Shared machinery of :class:`RNN`, :class:`LSTM` and :class:`GRU` (see torch.nn.RNNBase)."""

    kind = ""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 *, nonlinearity: str = "tanh", reset_after: bool = True, engine: str = "auto",
                 device=None, dtype=None) -> None:
        super().__init__()
        cells.check_sizes(input_size, hidden_size)
        if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 1:
            raise ConfigError(f"num_layers must be a positive integer, got {num_layers!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1:
            raise ConfigError(f"dropout must be a number in [0, 1], got {dropout!r}")
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
        self.engine = engine
        self.proj_size = 0  # torch.nn.LSTM's attribute; projections are not supported
        factory = {"device": device, "dtype": dtype}
        G = cells.GATES[self.kind]
        # Registered in torch.nn's order, so state_dict keys come out in the same order too.
        for layer in range(num_layers):
            for direction in range(self.num_directions):
                layer_in = input_size if layer == 0 else hidden_size * self.num_directions
                names = self._names(layer, direction)
                self.register_parameter(names[0], nn.Parameter(torch.empty(G * hidden_size, layer_in, **factory)))
                self.register_parameter(names[1], nn.Parameter(torch.empty(G * hidden_size, hidden_size, **factory)))
                if bias:
                    self.register_parameter(names[2], nn.Parameter(torch.empty(G * hidden_size, **factory)))
                    self.register_parameter(names[3], nn.Parameter(torch.empty(G * hidden_size, **factory)))
        self.reset_parameters()

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @staticmethod
    @functools.lru_cache(maxsize=256)  # looked up on every call
    def _names(layer: int, direction: int) -> tuple[str, str, str, str]:
        suffix = ("", "_reverse")[direction]
        return (f"weight_ih_l{layer}{suffix}", f"weight_hh_l{layer}{suffix}",
                f"bias_ih_l{layer}{suffix}", f"bias_hh_l{layer}{suffix}")

    def layer_weights(self, layer: int, direction: int) -> Weights:
        """(W_ih, W_hh, b_ih, b_hh) of one layer and direction; biases None when bias=False."""
        ih, hh, bih, bhh = names = self._names(layer, direction)
        # Looked up on every call: straight from the dict, but where a parametrization or bias=False
        # left a name out of it (getattr then finds the parametrized weight, or None).
        params = self._parameters
        try:
            return params[ih], params[hh], params[bih], params[bhh]
        except KeyError:
            return tuple(getattr(self, n, None) for n in names)

    @property
    def all_weights(self) -> list[list[Tensor]]:
        return [[w for w in self.layer_weights(layer, d) if w is not None]
                for layer in range(self.num_layers) for d in range(self.num_directions)]

    def reset_parameters(self) -> None:
        cells.init_uniform(self, self.hidden_size)

    def flatten_parameters(self) -> None:
        """No-op, for code written against torch.nn (which needs it for cuDNN)."""

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
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

    def _initial_state(self, hx, B: int, batched: bool, like: Tensor) -> list[State]:
        """Split hx ((L*D, B, H) or unbatched (L*D, H); a pair for LSTM) into per layer-direction
        state tuples of (B, H) tensors."""
        n_states = 2 if self.kind == "lstm" else 1
        LD = self.num_layers * self.num_directions
        if hx is None:  # one zero state that every layer-direction reads (engines never write it)
            return [(kernels.zeros((B, self.hidden_size), like.dtype, like.device),) * n_states] * LD
        if self.kind == "lstm":
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise ShapeError("LSTM expects hx as a tuple (h_0, c_0)")
            parts = tuple(hx)
        else:
            if not isinstance(hx, Tensor):
                raise ShapeError(f"{type(self).__name__} expects hx as a tensor, got {type(hx).__name__}")
            parts = (hx,)
        want = (LD, B, self.hidden_size) if batched else (LD, self.hidden_size)
        for name, p in zip(("h_0", "c_0"), parts):
            if tuple(p.shape) != want:
                raise ShapeError(
                    f"{type(self).__name__} expects {name} of shape {want} "
                    f"(num_layers*num_directions, {'batch, ' if batched else ''}hidden_size), "
                    f"got {tuple(p.shape)}"
                )
            if p.dtype != like.dtype:  # engines differ here (cast or fail), so say it once
                raise ShapeError(f"{name} dtype {p.dtype} does not match the input's {like.dtype}")
        if not batched:
            parts = tuple(p.unsqueeze(1) for p in parts)  # (L*D, 1, H)
        return [tuple(p[k] for p in parts) for k in range(LD)]

    def forward(self, input, hx=None):
        """input (T, B, I), or (B, T, I) with batch_first, or unbatched (T, I), or a PackedSequence.

        Returns (output, h_n) — (output, (h_n, c_n)) for LSTM — shaped as torch.nn's.
        """
        packed = isinstance(input, PackedSequence)
        if packed:
            x, lengths = pad_packed_sequence(input, batch_first=True)  # (B, T, I), original order
            batched = True
        else:
            if not isinstance(input, Tensor) or input.dim() not in (2, 3):
                shape = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
                raise ShapeError(
                    f"{type(self).__name__} expects input of shape (seq_len, batch, input_size), "
                    f"(batch, seq_len, input_size) with batch_first=True, or unbatched "
                    f"(seq_len, input_size); got {shape}"
                )
            batched = input.dim() == 3
            if not batched:
                x = input.unsqueeze(0)  # (1, T, I)
            else:
                x = input if self.batch_first else input.transpose(0, 1)  # (B, T, I)
            lengths = None
        if x.shape[-1] != self.input_size:
            raise ShapeError(
                f"{type(self).__name__} was built for input_size={self.input_size}, but the input "
                f"has {x.shape[-1]} features"
            )
        weights = [self.layer_weights(layer, d) for layer in range(self.num_layers)
                   for d in range(self.num_directions)]
        first = weights[0][0]
        if x.dtype != first.dtype:
            raise ShapeError(
                f"input dtype {x.dtype} does not match the parameters' {first.dtype} "
                f"(convert one of them, e.g. model.to({x.dtype}))"
            )
        B = x.shape[0]
        states = self._initial_state(hx, B, batched, x)
        run = pick_engine(self.engine, self.kind, x, lengths)
        finals: list[State] = []
        layer_input = x
        for layer in range(self.num_layers):
            outs = []
            for d in range(self.num_directions):
                k = layer * self.num_directions + d
                out, final = run(self.kind, layer_input, states[k], weights[k], lengths, reverse=d == 1,
                                 nonlinearity=self.nonlinearity, reset_after=self.reset_after)
                outs.append(out)
                finals.append(final)
            layer_input = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)  # (B, T, D*H)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        output = layer_input
        if len(finals) == 1:  # a view instead of a copy: one layer, one direction
            h_n = tuple(f.unsqueeze(0) for f in finals[0])  # (1, B, H)
        else:
            h_n = tuple(torch.stack([f[k] for f in finals], dim=0) for k in range(len(finals[0])))  # (L*D, B, H)
        if packed:
            output = _repack(output, lengths, input)
        elif not batched:
            output = output.squeeze(0)  # (T, D*H)
            h_n = tuple(h.squeeze(1) for h in h_n)  # (L*D, H)
        elif not self.batch_first:
            output = output.transpose(0, 1)  # (T, B, D*H)
        return output, (h_n if self.kind == "lstm" else h_n[0])


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

    forward(input, (h_0, c_0)=None) -> (output, (h_n, c_n)).
    """

    kind = "lstm"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 engine: str = "auto", device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         engine=engine, device=device, dtype=dtype)


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
