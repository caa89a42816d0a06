"""One time step of each recurrent cell: the equations, one line each.

The step functions (:func:`elman`, :func:`lstm`, :func:`gru`) are the reference math of rnnkit: the
sequence loop in :mod:`rnnkit.layers`, the seed's :class:`rnnkit.CustomRNN` and the fused kernels'
tests all stand on them. Weight layout is torch.nn's: ``W_ih`` is ``(G*H, I)`` and ``W_hh`` is
``(G*H, H)`` with the G gate blocks stacked in torch's order (LSTM i, f, g, o; GRU r, z, n), so
``F.linear(x, W_ih, b_ih)`` is ``W_ih x + b_ih`` for a whole batch of row vectors ``x`` (B, I).

The :class:`RNNCell`, :class:`LSTMCell` and :class:`GRUCell` modules are drop-in replacements of the
torch.nn cells: same arguments, defaults, parameter names, shapes and initialisation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError, ShapeError

NONLINEARITIES = {"tanh": torch.tanh, "relu": torch.relu}


def check_nonlinearity(nonlinearity: str) -> None:
    if nonlinearity not in NONLINEARITIES:
        raise ConfigError(
            f"unknown nonlinearity {nonlinearity!r} (use one of: {', '.join(NONLINEARITIES)})"
        )


def elman(x: Tensor, h: Tensor, W_ih: Tensor, W_hh: Tensor, b_ih: Tensor | None,
          b_hh: Tensor | None, nonlinearity: str = "tanh") -> Tensor:
    """Elman step. x (B, I), h (B, H) -> h' (B, H).

        h' = act(W_ih x + b_ih + W_hh h + b_hh),   act = tanh | relu

    Seed notation: ``h_t = tanh(W_xh x_t + W_hh h_{t-1} + b_h)`` with W_xh = W_ih, b_h = b_ih + b_hh.
    """
    act = NONLINEARITIES[nonlinearity]
    return act(F.linear(x, W_ih, b_ih) + F.linear(h, W_hh, b_hh))


def lstm(x: Tensor, state: tuple[Tensor, Tensor], W_ih: Tensor, W_hh: Tensor,
         b_ih: Tensor | None, b_hh: Tensor | None, W_hr: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """LSTM step (Hochreiter & Schmidhuber 1997, with forget gate). x (B, I), h and c (B, H).

        i  = σ(W_ii x + b_ii + W_hi h + b_hi)
        f  = σ(W_if x + b_if + W_hf h + b_hf)
        g  = tanh(W_ig x + b_ig + W_hg h + b_hg)
        o  = σ(W_io x + b_io + W_ho h + b_ho)
        c' = f ⊙ c + i ⊙ g
        h' = o ⊙ tanh(c')
        h' = W_hr (o ⊙ tanh(c'))      with a projection W_hr (P, H) (Sak et al. 2014): h is (B, P)

    Seed notation: ``C_t`` = c', ``C̃`` = g, and the seed's ``W·[h_{t-1}, x_t] + b`` is split here
    into W_h* h + W_i* x with two biases, as in torch.nn.
    """
    h, c = state
    xi, xf, xg, xo = F.linear(x, W_ih, b_ih).chunk(4, dim=-1)
    hi, hf, hg, ho = F.linear(h, W_hh, b_hh).chunk(4, dim=-1)
    i = torch.sigmoid(xi + hi)
    f = torch.sigmoid(xf + hf)
    g = torch.tanh(xg + hg)
    o = torch.sigmoid(xo + ho)
    c = f * c + i * g
    h = o * torch.tanh(c)
    if W_hr is not None:
        h = F.linear(h, W_hr)
    return h, c


def gru(x: Tensor, h: Tensor, W_ih: Tensor, W_hh: Tensor, b_ih: Tensor | None,
        b_hh: Tensor | None, reset_after: bool = True) -> Tensor:
    """GRU step (Cho et al. 2014). x (B, I), h (B, H) -> h' (B, H).

        r  = σ(W_ir x + b_ir + W_hr h + b_hr)
        z  = σ(W_iz x + b_iz + W_hz h + b_hz)
        n  = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))      reset_after=True  (torch.nn, cuDNN)
        n  = tanh(W_in x + b_in + W_hn (r ⊙ h) + b_hn)      reset_after=False (Cho et al. v3, the seed)
        h' = (1 - z) ⊙ n + z ⊙ h

    Seed notation: ``h̃`` = n, and the seed's update gate is 1 - z here (the seed writes
    ``h_t = (1 - z) h_{t-1} + z h̃``; torch.nn and rnnkit keep z as the weight of the old state).
    """
    H = h.shape[-1]
    xr, xz, xn = F.linear(x, W_ih, b_ih).chunk(3, dim=-1)
    if reset_after:
        hr, hz, hn = F.linear(h, W_hh, b_hh).chunk(3, dim=-1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
    else:
        hr, hz = F.linear(h, W_hh[: 2 * H], None if b_hh is None else b_hh[: 2 * H]).chunk(2, dim=-1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + F.linear(r * h, W_hh[2 * H:], None if b_hh is None else b_hh[2 * H:]))
    return (1 - z) * n + z * h


def peephole_lstm(x: Tensor, state: tuple[Tensor, Tensor], W_ih: Tensor, W_hh: Tensor, b_ih: Tensor | None,
                  b_hh: Tensor | None, w_ci: Tensor, w_cf: Tensor, w_co: Tensor) -> tuple[Tensor, Tensor]:
    """Peephole LSTM step (Gers & Schmidhuber 2000): the gates also see the cell state, through unit
    weights w_ci, w_cf, w_co (H,) — i and f the previous c, o the new one. Gate order i, f, g, o.

        i  = σ(W_ii x + b_ii + W_hi h + b_hi + w_ci ⊙ c)
        f  = σ(W_if x + b_if + W_hf h + b_hf + w_cf ⊙ c)
        g  = tanh(W_ig x + b_ig + W_hg h + b_hg)
        c' = f ⊙ c + i ⊙ g
        o  = σ(W_io x + b_io + W_ho h + b_ho + w_co ⊙ c')
        h' = o ⊙ tanh(c')
    """
    h, c = state
    xi, xf, xg, xo = F.linear(x, W_ih, b_ih).chunk(4, dim=-1)
    hi, hf, hg, ho = F.linear(h, W_hh, b_hh).chunk(4, dim=-1)
    i = torch.sigmoid(xi + hi + w_ci * c)
    f = torch.sigmoid(xf + hf + w_cf * c)
    g = torch.tanh(xg + hg)
    c = f * c + i * g
    o = torch.sigmoid(xo + ho + w_co * c)
    h = o * torch.tanh(c)
    return h, c


def indrnn(x: Tensor, h: Tensor, W_ih: Tensor, W_hh: None, b_ih: Tensor | None, b_hh: Tensor | None,
           u: Tensor) -> Tensor:
    """IndRNN step (Li et al. 2018): each unit has its own recurrent weight u (H,), no matrix (W_hh is
    None). x (B, I), h (B, H) -> h' (B, H).

        h' = relu(W_ih x + b_ih + u ⊙ h + b_hh)
    """
    pre = F.linear(x, W_ih, b_ih) + u * h
    return torch.relu(pre if b_hh is None else pre + b_hh)


# Gate blocks per cell kind: the G in the weights' (G*H, ·) shapes.
GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def init_uniform(module: nn.Module, hidden_size: int) -> None:
    """torch.nn's initialisation of every recurrent weight and bias: U(-1/sqrt(H), 1/sqrt(H))."""
    bound = 1.0 / math.sqrt(hidden_size) if hidden_size > 0 else 0.0
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-bound, bound)


def check_sizes(input_size: int, hidden_size: int, **more: int) -> None:
    """Every size, including those named in ``more`` (e.g. output_size=O), is a positive int."""
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size), *more.items()):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")


class _CellBase(nn.Module):
    kind = ""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__()
        check_sizes(input_size, hidden_size)
        factory = {"device": device, "dtype": dtype}
        G = GATES[self.kind]
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self.weight_ih = nn.Parameter(torch.empty(G * hidden_size, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(G * hidden_size, hidden_size, **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(G * hidden_size, **factory))
            self.bias_hh = nn.Parameter(torch.empty(G * hidden_size, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_uniform(self, self.hidden_size)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        return s

    def _weights(self):
        return self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh

    def _prepare(self, input: Tensor, hx: Tensor | None) -> tuple[Tensor, Tensor, bool]:
        """Validate shapes; return (x (B, I), h (B, H), batched)."""
        if input.dim() not in (1, 2):
            raise ShapeError(
                f"{type(self).__name__} expects input of shape (batch, {self.input_size}) or "
                f"({self.input_size},), got {tuple(input.shape)}"
            )
        if input.shape[-1] != self.input_size:
            raise ShapeError(
                f"{type(self).__name__} was built for input_size={self.input_size}, "
                f"but the input has {input.shape[-1]} features (shape {tuple(input.shape)})"
            )
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)  # (B, I)
        if hx is None:
            return x, x.new_zeros(x.shape[0], self.hidden_size), batched
        want = (x.shape[0], self.hidden_size) if batched else (self.hidden_size,)
        if tuple(hx.shape) != want:
            raise ShapeError(
                f"{type(self).__name__} expects a hidden state of shape {want}, got {tuple(hx.shape)}"
            )
        return x, (hx if batched else hx.unsqueeze(0)), batched  # (B, H)


class RNNCell(_CellBase):
    """Elman cell, drop-in for ``torch.nn.RNNCell``: h' = act(W_ih x + b_ih + W_hh h + b_hh).

    Input (B, I) or (I,), hx (B, H) or (H,) (zeros if omitted) -> h' of the same batchedness.
    """

    kind = "rnn"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", device=None, dtype=None) -> None:
        check_nonlinearity(nonlinearity)
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, bias, device, dtype)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.nonlinearity == "tanh" else s + f", nonlinearity={self.nonlinearity}"

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        x, h, batched = self._prepare(input, hx)
        h = elman(x, h, *self._weights(), nonlinearity=self.nonlinearity)
        return h if batched else h.squeeze(0)


class LSTMCell(_CellBase):
    """LSTM cell, drop-in for ``torch.nn.LSTMCell`` (equations in :func:`rnnkit.cells.lstm`).

    Input (B, I) or (I,), hx = (h, c) each (B, H) or (H,) (zeros if omitted) -> (h', c').
    """

    kind = "lstm"

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None):
        if hx is None:
            x, h, batched = self._prepare(input, None)
            c = torch.zeros_like(h)
        else:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise ShapeError("LSTMCell expects hx as a tuple (h, c)")
            x, h, batched = self._prepare(input, hx[0])
            _, c, _ = self._prepare(input, hx[1])
        h, c = lstm(x, (h, c), *self._weights())
        return (h, c) if batched else (h.squeeze(0), c.squeeze(0))


class GRUCell(_CellBase):
    """GRU cell, drop-in for ``torch.nn.GRUCell`` (equations in :func:`rnnkit.cells.gru`).

    ``reset_after=True`` is torch.nn's candidate; ``False`` applies the reset gate before the
    recurrent matrix, as in Cho et al. 2014 and the seed. Input (B, I) or (I,) -> h' (B, H) or (H,).
    """

    kind = "gru"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 reset_after: bool = True, device=None, dtype=None) -> None:
        self.reset_after = bool(reset_after)
        super().__init__(input_size, hidden_size, bias, device, dtype)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.reset_after else s + ", reset_after=False"

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        x, h, batched = self._prepare(input, hx)
        h = gru(x, h, *self._weights(), reset_after=self.reset_after)
        return h if batched else h.squeeze(0)
