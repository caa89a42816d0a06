"""rnnkit.RNNCell / LSTMCell / GRUCell against torch.nn's cells in float64; gradcheck; initialisation;
GRU reset_after=False against its equations; errors."""

import math

import pytest
import torch
from torch import nn

import rnnkit
from conftest import DOUBLE, assert_close, cotangent, param_grads

pytestmark = pytest.mark.usefixtures("single_thread")

B, I, H = 3, 4, 6

# name -> (torch.nn class, rnnkit class, extra constructor arguments)
CELLS = {
    "rnn_tanh": (nn.RNNCell, rnnkit.RNNCell, {"nonlinearity": "tanh"}),
    "rnn_relu": (nn.RNNCell, rnnkit.RNNCell, {"nonlinearity": "relu"}),
    "lstm": (nn.LSTMCell, rnnkit.LSTMCell, {}),
    "gru": (nn.GRUCell, rnnkit.GRUCell, {}),
}


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


def run(cell, x, hx) -> dict:
    """Forward and backward of sum(outputs * fixed cotangents); every number to compare."""
    x = leaf(x)
    hx = None if hx is None else tuple(leaf(h) for h in hx) if isinstance(hx, tuple) else leaf(hx)
    out = cell(x, hx)
    outs = out if isinstance(out, tuple) else (out,)
    sum((o * cotangent(o)).sum() for o in outs).backward()
    result = {f"out{k}": o.detach() for k, o in enumerate(outs)}
    result["x_grad"] = x.grad
    if hx is not None:
        result.update({f"hx_grad{k}": h.grad for k, h in enumerate(hx if isinstance(hx, tuple) else (hx,))})
    result.update({f"grad.{n}": g for n, g in param_grads(cell).items()})
    return result


@pytest.mark.parametrize("copy", ["torch_to_rnnkit", "rnnkit_to_torch"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("given_hx", [False, True], ids=["no_hx", "hx"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("kind", CELLS)
def test_cell_matches_torch(kind, batched, given_hx, bias, copy):
    torch_cls, ours_cls, extra = CELLS[kind]
    torch.manual_seed(0)
    ref = torch_cls(I, H, bias=bias, dtype=DOUBLE, **extra)
    ours = ours_cls(I, H, bias=bias, dtype=DOUBLE, **extra)
    assert list(ours.state_dict()) == list(ref.state_dict())
    if copy == "torch_to_rnnkit":
        ours.load_state_dict(ref.state_dict(), strict=True)
    else:
        ref.load_state_dict(ours.state_dict(), strict=True)
    lead = (B,) if batched else ()
    x = torch.randn(*lead, I, dtype=DOUBLE)
    hx = None
    if given_hx:
        hx = torch.randn(*lead, H, dtype=DOUBLE)
        if kind == "lstm":
            hx = (hx, torch.randn(*lead, H, dtype=DOUBLE))
    got, want = run(ours, x, hx), run(ref, x, hx)
    assert list(got) == list(want)
    assert got["out0"].shape == (*lead, H)
    for key in want:
        assert_close(got[key], want[key])


@pytest.mark.parametrize("kind", CELLS)
def test_cell_init_is_uniform_within_one_over_sqrt_hidden(kind):
    _, ours_cls, extra = CELLS[kind]
    hidden = 36
    torch.manual_seed(0)
    cell = ours_cls(40, hidden, **extra)
    bound = 1 / math.sqrt(hidden)
    for name, p in cell.named_parameters():
        values = p.detach().flatten()
        assert values.abs().max() <= bound, name
        assert values.abs().max() > 0.9 * bound, name  # >= 36 draws of U(-b, b) reach past 0.9 b
    values = torch.cat([p.detach().flatten() for p in cell.parameters()])
    assert abs((values.abs() < bound / 2).double().mean().item() - 0.5) < 0.05
    assert abs(values.mean().item()) < 0.05 * bound


# ---- gradcheck -----------------------------------------------------------------------------------

@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("kind", ["rnn_tanh", "rnn_relu", "lstm", "gru", "gru_reset_before"])
def test_cell_gradcheck(kind, batched):
    """Input, state and every parameter against finite differences."""
    if kind == "gru_reset_before":
        cell = rnnkit.GRUCell(3, 4, reset_after=False, dtype=DOUBLE)
    else:
        _, ours_cls, extra = CELLS[kind]
        cell = ours_cls(3, 4, dtype=DOUBLE, **extra)
    names = [n for n, _ in cell.named_parameters()]
    lead = (2,) if batched else ()
    torch.manual_seed(1)
    x = torch.randn(*lead, 3, dtype=DOUBLE, requires_grad=True)
    states = [torch.randn(*lead, 4, dtype=DOUBLE, requires_grad=True) for _ in range(2 if kind == "lstm" else 1)]

    def f(x, *rest):
        params = dict(zip(names, rest[len(states):]))
        hx = tuple(rest[:len(states)]) if kind == "lstm" else rest[0]
        return torch.func.functional_call(cell, params, (x, hx))

    assert torch.autograd.gradcheck(f, (x, *states, *[leaf(p) for p in cell.parameters()]))


# ---- GRU reset_after=False against its equations, written here ----------------------------------

@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_gru_cell_reset_before_matches_its_equations(batched):
    torch.manual_seed(0)
    cell = rnnkit.GRUCell(I, H, reset_after=False, dtype=DOUBLE)
    lead = (B,) if batched else ()
    x = torch.randn(*lead, I, dtype=DOUBLE)
    h = torch.randn(*lead, H, dtype=DOUBLE)
    W_ir, W_iz, W_in = cell.weight_ih.split(H)
    W_hr, W_hz, W_hn = cell.weight_hh.split(H)
    b_ir, b_iz, b_in = cell.bias_ih.split(H)
    b_hr, b_hz, b_hn = cell.bias_hh.split(H)
    r = torch.sigmoid(x @ W_ir.T + b_ir + h @ W_hr.T + b_hr)
    z = torch.sigmoid(x @ W_iz.T + b_iz + h @ W_hz.T + b_hz)
    n = torch.tanh(x @ W_in.T + b_in + (r * h) @ W_hn.T + b_hn)
    want = (1 - z) * n + z * h
    params = list(cell.parameters())
    want_grads = torch.autograd.grad((want * cotangent(want)).sum(), params)

    got = cell(x, h)
    assert_close(got, want)
    for g, w in zip(torch.autograd.grad((got * cotangent(got)).sum(), params), want_grads):
        assert_close(g, w)
    # The reset gate's place matters: torch.nn's GRUCell (reset after W_hn) is another function.
    ref = nn.GRUCell(I, H, dtype=DOUBLE)
    ref.load_state_dict(cell.state_dict(), strict=True)
    assert not torch.allclose(ref(x, h), want)


def test_gru_cell_reset_after_false_without_bias_matches_its_equations():
    torch.manual_seed(0)
    cell = rnnkit.GRUCell(I, H, bias=False, reset_after=False, dtype=DOUBLE)
    x, h = torch.randn(B, I, dtype=DOUBLE), torch.randn(B, H, dtype=DOUBLE)
    W_ir, W_iz, W_in = cell.weight_ih.split(H)
    W_hr, W_hz, W_hn = cell.weight_hh.split(H)
    r = torch.sigmoid(x @ W_ir.T + h @ W_hr.T)
    z = torch.sigmoid(x @ W_iz.T + h @ W_hz.T)
    n = torch.tanh(x @ W_in.T + (r * h) @ W_hn.T)
    assert_close(cell(x, h), (1 - z) * n + z * h)


# ---- errors -------------------------------------------------------------------------------------

def test_cell_repr_matches_torch():
    for kind, (torch_cls, ours_cls, extra) in CELLS.items():
        for kw in ({}, {"bias": False}):
            got, want = repr(ours_cls(I, H, **extra, **kw)), repr(torch_cls(I, H, **extra, **kw))
            if kind == "rnn_relu":  # torch.nn.RNNCell shows a non-default nonlinearity too
                assert "nonlinearity=relu" in want
            assert got == want


def check_user_error(call, *fragments):
    """call() raises an RnnkitError that is also a ValueError and says every fragment."""
    with pytest.raises(rnnkit.RnnkitError) as err:
        call()
    assert isinstance(err.value, ValueError)
    for fragment in fragments:
        assert fragment in str(err.value)


@pytest.mark.parametrize("kind", CELLS)
def test_cell_wrong_input_rank(kind):
    _, ours_cls, extra = CELLS[kind]
    cell = ours_cls(I, H, **extra)
    check_user_error(lambda: cell(torch.randn(2, B, I)), f"(batch, {I})", f"({I},)", str((2, B, I)))
    check_user_error(lambda: cell(torch.randn(())), f"(batch, {I})")


@pytest.mark.parametrize("kind", CELLS)
def test_cell_wrong_feature_size(kind):
    _, ours_cls, extra = CELLS[kind]
    cell = ours_cls(I, H, **extra)
    check_user_error(lambda: cell(torch.randn(B, I + 1)), f"input_size={I}", str((B, I + 1)))
    check_user_error(lambda: cell(torch.randn(I + 1)), f"input_size={I}")


@pytest.mark.parametrize("kind", CELLS)
def test_cell_wrong_hx_shape(kind):
    _, ours_cls, extra = CELLS[kind]
    cell = ours_cls(I, H, **extra)
    cases = [(torch.randn(B, I), (B, H), torch.randn(B, H + 1)),
             (torch.randn(B, I), (B, H), torch.randn(B + 1, H)),
             (torch.randn(B, I), (B, H), torch.randn(H)),
             (torch.randn(I), (H,), torch.randn(1, H))]
    for x, want, bad in cases:
        good = torch.zeros(want)
        for hx in ([(bad, good), (good, bad)] if kind == "lstm" else [bad]):
            check_user_error(lambda: cell(x, hx), str(want), str(tuple(bad.shape)))


@pytest.mark.parametrize("hx", ["tensor", "triple"])
def test_lstm_cell_hx_must_be_a_pair(hx):
    h = torch.zeros(B, H)
    check_user_error(lambda: rnnkit.LSTMCell(I, H)(torch.randn(B, I), h if hx == "tensor" else (h, h, h)),
                     "(h, c)")


def test_cell_bad_arguments():
    check_user_error(lambda: rnnkit.RNNCell(I, H, nonlinearity="sigmoid"), "'sigmoid'", "tanh, relu")
    for sizes in ((0, H), (I, 0), (I, -2), (1.0, H)):
        check_user_error(lambda: rnnkit.LSTMCell(*sizes), "must be a positive integer")
