"""Models: the seed's CustomRNN and the forecaster (recurrent encoder + linear head)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .errors import ConfigError, ShapeError
from .cells import check_sizes
from .layers import GRU, LSTM, RNN, check_engine, pick_engine


class CustomRNN(nn.Module):
    """The seed's model, parameter for parameter: a one-layer tanh Elman RNN read out at the last step.

        h_0 = 0
        h_t = tanh(x_t @ W_ih + h_{t-1} @ W_hh + bias_h)
        y   = h_T @ W_ho + bias_o

    Parameters W_ih (I, H), W_hh (H, H), W_ho (H, O) — the seed's row-vector layout, the transpose of
    torch.nn's — and biases bias_h (H), bias_o (O); kaiming_uniform_(a=sqrt(5)) on the matrices, zero
    biases. A state_dict saved by the seed's code loads with strict=True. The time loop is
    :mod:`rnnkit.layers`' engine with W_ih.T and W_hh.T as torch-layout weights.

    forward: x (B, T, I) -> (B, O).
    """

    def __init__(self, input_size: int, hidden_size: int, output_size: int, engine: str = "auto") -> None:
        super().__init__()
        check_sizes(input_size, hidden_size, output_size=output_size)
        check_engine(engine)
        self.input_size, self.hidden_size, self.output_size = input_size, hidden_size, output_size
        self.engine = engine
        self.W_ih = nn.Parameter(torch.empty(input_size, hidden_size))
        self.W_hh = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.W_ho = nn.Parameter(torch.empty(hidden_size, output_size))
        self.bias_h = nn.Parameter(torch.zeros(hidden_size))
        self.bias_o = nn.Parameter(torch.zeros(output_size))
        self.init_weights()

    def init_weights(self) -> None:
        for W in (self.W_ih, self.W_hh, self.W_ho):
            nn.init.kaiming_uniform_(W, a=math.sqrt(5))

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, {self.output_size}"

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ShapeError(
                f"CustomRNN expects input of shape (batch, seq_len, {self.input_size}), got {tuple(x.shape)}"
            )
        h0 = (x.new_zeros(x.shape[0], self.hidden_size),)
        run = pick_engine(self.engine, "rnn", x, None)
        _, (h_T,) = run("rnn", x, h0, (self.W_ih.t(), self.W_hh.t(), self.bias_h, None))
        return h_T @ self.W_ho + self.bias_o  # (B, O)


class RecurrentForecaster(nn.Module):
    """A recurrent encoder (rnnkit.RNN, LSTM or GRU, batch-first) read by a linear head.

        out_t = encoder(x)_t                      (B, T, H)
        y_t   = head(out_t)                       prediction of the value(s) after step t
        y_t   = x_t[:targets] + head(out_t)       with residual=True: the head predicts the change

    The targets are the first ``n_targets`` input features; ``output_size`` = horizon * n_targets,
    laid out horizon-major as the data's y (horizon, targets). The residual form suits series that
    move little per step (the seed's waves, except at their jumps) and trains several times faster.
    lookback > 0: the model reads only the last ``lookback`` steps of its window (an ensemble's members
    read different spans of the same window). n_future > 0: x (B, T + horizon, I) also holds the
    horizon's rows, of which only the last n_future features are read (those known ahead: prices,
    promotions, the calendar): the head reads them beside the encoder's last output.
    relative=True: the encoder and the linear skip read the target features minus their value at the
    window's last step (the window's level), so a series is read the same at any level, and what the
    head and the skip output for horizon step h (1-based) is multiplied by h: the mean change per
    step up to it, which a trend keeps the same at every step; with residual=True the forecast is the
    level plus that (last step only).

    forward(x (B, T, I)) -> (B, O), the prediction after the last step (the seed's target);
    forward(x, every_step=True) -> (B, T, O), one prediction after every step.
    """

    def __init__(self, cell: str, input_size: int, hidden_size: int, output_size: int,
                 num_layers: int = 1, dropout: float = 0.0, residual: bool = False, n_targets: int = 1,
                 engine: str = "auto", linear_window: int = 0, relative: bool = False, lookback: int = 0,
                 n_future: int = 0) -> None:
        super().__init__()
        if cell not in ENCODERS:
            raise ConfigError(f"unknown cell {cell!r} (use one of: {', '.join(ENCODERS)})")
        if residual and (n_targets > input_size or output_size % n_targets):
            raise ConfigError(f"residual=True needs the {n_targets} target(s) among the {input_size} input "
                              f"features and output_size a multiple of them (got {output_size})")
        if relative and n_targets > input_size:
            raise ConfigError(f"relative=True needs the {n_targets} target(s) among the {input_size} input features")
        self.cell, self.residual, self.n_targets, self.relative = cell, residual, n_targets, relative
        self.lookback = lookback  # read only the window's last `lookback` steps (0: all of it)
        self.encoder = ENCODERS[cell](input_size, hidden_size, num_layers, batch_first=True,
                                      dropout=dropout, engine=engine)
        # n_future > 0: x holds the horizon's rows after the window's, whose last n_future features are
        # known ahead; the head also reads them (flattened).
        self.n_future = n_future
        self.ahead = output_size // n_targets if n_future else 0
        self.head = nn.Linear(hidden_size + self.ahead * n_future, output_size)
        # The linear autoregressive skip (LSTNet's "highway"): a causal convolution over the last
        # `linear_window` inputs, so each step's forecast adds a linear AR of its own past.
        self.linear_window = linear_window
        self.linear = nn.Conv1d(input_size, output_size, linear_window) if linear_window else None
        # (relative) each output's horizon step, 1-based, in the output's horizon-major layout
        steps = torch.arange(output_size) // n_targets + 1.0
        self.register_buffer("steps", steps, persistent=False)

    def forward(self, x: Tensor, every_step: bool = False) -> Tensor:
        ahead = None
        if self.n_future:
            if every_step:
                raise ConfigError("features known ahead are read for the last step's forecast only (loss_steps last)")
            x, ahead = x[:, :-self.ahead], x[:, -self.ahead:, -self.n_future:]  # (B, S, I), (B, H, n_future)
        if self.lookback and not every_step:
            x = x[:, -self.lookback:]  # (B, lookback, I)
        level = x[:, -1:, :self.n_targets]  # (B, 1, targets)
        if self.relative:
            if every_step:
                raise ConfigError("relative=True forecasts from the window's last step only (loss_steps last)")
            x = torch.cat([x[..., :self.n_targets] - level, x[..., self.n_targets:]], dim=2)
        out, _ = self.encoder(x)  # (B, T, H)
        skip = None
        if self.linear is not None:
            past = x[:, -self.linear_window:] if not every_step else x
            past = nn.functional.pad(past.transpose(1, 2), (self.linear_window - past.shape[1], 0))  # (B, I, >=L)
            skip = self.linear(past).transpose(1, 2)  # (B, T or 1, O)
            skip = skip if every_step else skip[:, -1]
        if not every_step:
            out, x = out[:, -1], x[:, -1]  # (B, H), (B, I)
        if ahead is not None:
            out = torch.cat([out, ahead.flatten(1)], dim=1)  # (B, H + horizon * n_future)
        pred = self.head(out)  # (B, [T,] O)
        if skip is not None:
            pred = pred + skip
        if self.relative:
            pred = pred * self.steps
        if self.residual:
            last = level[:, 0] if self.relative else x[..., :self.n_targets]  # (B, [T,] targets)
            pred = pred + last.tile(pred.shape[-1] // self.n_targets)  # one copy per horizon step
        return pred


class Ensemble(nn.Module):
    """Networks trained side by side on the same batches, each from its own initial weights.

    In training mode forward returns every member's output stacked, (members, B, ...), so that one
    loss (their mean) trains each on its own gradient; in eval mode, the median over the members
    (the lower of the two middle values for an even number, as torch.median; taken from a sort,
    which ONNX has, unlike a median)."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: Tensor, every_step: bool = False) -> Tensor:
        outs = torch.stack([m(x, every_step) for m in self.members])
        return outs if self.training else outs.sort(dim=0).values[(len(self.members) - 1) // 2]


ENCODERS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}
LOOKBACKS = (1.0, 0.5, 0.75)  # the spans of its window an ensemble's members read, in turn (see build_model)


def build_model(model: str, cell: str, input_size: int, hidden_size: int, output_size: int,
                num_layers: int = 1, dropout: float = 0.0, residual: bool = False,
                n_targets: int = 1, linear_window: int = 0, relative: bool = False, members: int = 1,
                n_future: int = 0) -> nn.Module:
    """The network a ModelConfig names: ``"recurrent"`` (RecurrentForecaster, or an Ensemble of
    ``members`` of them, each from the generator's next random weights) or ``"custom"`` (CustomRNN).
    An ensemble with a linear window L reads spans of it in turn: the last L, L/2, 3L/4, L, ... steps
    (LOOKBACKS), so that its members differ in more than their initial weights."""
    if model == "custom":
        return CustomRNN(input_size, hidden_size, output_size)
    if model != "recurrent":
        raise ConfigError(f"unknown model {model!r} (use recurrent or custom)")
    nets = []
    for k in range(members):
        span = max(2, round(LOOKBACKS[k % len(LOOKBACKS)] * linear_window)) if members > 1 and linear_window else 0
        nets.append(RecurrentForecaster(cell, input_size, hidden_size, output_size, num_layers, dropout, residual,
                                        n_targets, linear_window=span or linear_window, relative=relative,
                                        lookback=span, n_future=n_future))
    if relative:  # from the forecast "no change" (the level), which the heads learn to correct
        for net in nets:
            zero_linear_parts(net)
    return nets[0] if members == 1 else Ensemble(nets)


@torch.no_grad()
def zero_linear_parts(model: "RecurrentForecaster") -> None:
    """Zero the head and the linear skip: the forecaster then starts as its residual baseline."""
    for layer in (model.head, model.linear):
        if layer is not None:
            layer.weight.zero_()
            layer.bias.zero_()


@torch.no_grad()
def init_linear_skip(model: RecurrentForecaster, weights: Tensor) -> None:
    """Start the forecaster as a given linear autoregression: the skip takes ridge ``weights``
    (L*I + 1, O) (rows: the window flattened time-major, then the intercept) and the recurrent head
    starts at zero, so training begins from the AR forecast and learns what it misses."""
    L, I = model.linear_window, model.linear.in_channels
    w = weights.to(model.linear.weight.dtype)
    model.linear.weight.copy_(w[:-1].reshape(L, I, -1).permute(2, 1, 0))  # (O, I, L)
    model.linear.bias.copy_(w[-1])
    model.head.weight.zero_()
    model.head.bias.zero_()
