"""Cells torch.nn lacks, added through the fused engine's cell registry alone (one file and one
entry each, rnnkit.kernels.cells): the peephole LSTM and IndRNN, and a cell a user defines here.
Each layer's fused engine is held to its reference loop (the equations of rnnkit.cells, or for the
user's cell its own forward on tensors) in float64, outputs and every gradient, and gradcheck holds
both the reference steps and the fused autograd.Function."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from rnnkit import cells
from rnnkit.kernels import cells as registry
from rnnkit.kernels.fused import FusedLayer
from rnnkit.kernels.ops import sigmoid, tanh
from rnnkit.layers import Recurrent

DOUBLE = torch.float64
B, T, I, H = 4, 6, 3, 5
LENGTHS = torch.tensor([6, 2, 5, 1])


def _mgu_forward(pre, prev, prm):
    """A minimal gated unit (Zhou et al. 2016), written per unit: one gate f both forgets and
    resets, h' = (1 - f) h + f tanh(a_n + f (u_n h))."""
    a_f, a_n = pre
    h = prev[0]
    u_n = prm[0]
    f = sigmoid(a_f)
    n = tanh(a_n + f * (u_n * h))
    return ((1 - f) * h + f * n,), (f, n)


def _mgu_backward(keep, prev, new, prm, d_new):
    f, n = keep
    h = prev[0]
    u_n = prm[0]
    dh = d_new[0]
    one = type(dh)(1.0)
    dn = dh * f * (one - n * n)
    df = dh * (n - h) + dn * u_n * h
    da_f = df * f * (one - f)
    return (da_f, dn), (dh * (one - f) + dn * f * u_n,), (dn * f * h,)


MGU = registry.pointwise("mgu", 2, _mgu_forward, _mgu_backward, saved=0, params=("weight_un",), recurrent=True)


@pytest.fixture(scope="module", autouse=True)
def _registered():
    registry.register(MGU)
    yield
    registry.REGISTRY.pop("mgu", None)


NAMES = ("peephole_lstm", "indrnn", "mgu")
CONFIGS = [  # (num_layers, bidirectional, bias, hx given, packed, batch_first)
    (1, False, True, False, False, True),
    (2, True, True, True, True, False),
    (1, True, False, True, True, True),
]


def _run(layer, engine, x, hx, packed):
    layer.engine = engine
    inputs = [x] + ([] if hx is None else list(hx) if isinstance(hx, tuple) else [hx])
    inp = pack_padded_sequence(x, LENGTHS, batch_first=layer.batch_first, enforce_sorted=False) if packed else x
    out, state = layer(inp, hx)
    outs = [out.data if packed else out] + (list(state) if isinstance(state, tuple) else [state])
    gen = torch.Generator().manual_seed(1)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum() for t in outs)
    return outs + list(torch.autograd.grad(loss, inputs + list(layer.parameters())))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("name", NAMES)
def test_fused_matches_reference_float64(name, config):
    num_layers, bidirectional, bias, hx_given, packed, batch_first = config
    torch.manual_seed(0)
    layer = Recurrent(name, I, H, num_layers=num_layers, bias=bias, batch_first=batch_first,
                      bidirectional=bidirectional, dtype=DOUBLE)
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=DOUBLE, requires_grad=True)
    hx = None
    if hx_given:
        LD = num_layers * (2 if bidirectional else 1)
        states = [torch.randn(LD, B, H, dtype=DOUBLE, requires_grad=True)
                  for _ in range(registry.get(name).states)]
        hx = tuple(states) if len(states) == 2 else states[0]
    ref = _run(layer, "reference", x, hx, packed)
    fused = _run(layer, "fused", x, hx, packed)
    assert len(ref) == len(fused)
    for k, (a, b) in enumerate(zip(ref, fused)):
        torch.testing.assert_close(b, a, atol=1e-9, rtol=0, msg=lambda m: f"tensor {k}: {m}")


@pytest.mark.parametrize("name", NAMES)
def test_float32_and_one_input_feature(name):
    """float32, with one input feature (the loops project it themselves) and H = 40 (vectors and
    their remainders), against the reference loop at float32's tolerance."""
    torch.manual_seed(0)
    layer = Recurrent(name, 1, 40, batch_first=True)
    x = torch.randn(8, 20, 1, requires_grad=True)
    for k, (a, b) in enumerate(zip(_run(layer, "reference", x, None, False), _run(layer, "fused", x, None, False))):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5, msg=lambda m: f"tensor {k}: {m}")


def _inputs(name):
    cell = registry.get(name)
    G = cell.gates
    torch.manual_seed(0)
    t = [torch.randn(3, 4, 2), torch.randn(3, H), torch.randn(3, H) if cell.states == 2 else None,
         torch.randn(G * H, 2), torch.randn(G * H, H) if cell.recurrent else None, torch.randn(G * H),
         torch.randn(G * H), *[torch.rand(H) - 0.5 for _ in cell.params]]
    return cell, [None if a is None else a.to(DOUBLE).requires_grad_() for a in t]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_of_the_fused_layer(name, reverse):
    cell, args = _inputs(name)
    lengths = torch.tensor([4, 1, 3])
    present = [i for i, a in enumerate(args) if a is not None]

    def f(*tensors):
        full = list(args)
        for i, t in zip(present, tensors):
            full[i] = t
        out, h_n, c_n = FusedLayer.apply(cell, reverse, lengths, *full)
        return (out, h_n) if c_n is None else (out, h_n, c_n)

    assert torch.autograd.gradcheck(f, tuple(args[i] for i in present), atol=1e-7)


def test_gradcheck_of_the_reference_steps():
    torch.manual_seed(0)
    x, h, c = (torch.randn(3, n, dtype=DOUBLE, requires_grad=True) for n in (2, H, H))
    W = [torch.randn(4 * H, n, dtype=DOUBLE, requires_grad=True) for n in (2, H)]
    b = [torch.randn(4 * H, dtype=DOUBLE, requires_grad=True) for _ in range(2)]
    w = [torch.randn(H, dtype=DOUBLE, requires_grad=True) for _ in range(3)]
    assert torch.autograd.gradcheck(lambda *a: cells.peephole_lstm(a[0], (a[1], a[2]), *a[3:]),
                                    (x, h, c, *W, *b, *w))
    u = torch.rand(H, dtype=DOUBLE, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, h, W, b1, b2, u: cells.indrnn(x, h, W, None, b1, b2, u),
                                    (x, h, W[0][:H], b[0][:H], b[1][:H], u))


def test_the_peephole_equations():
    """The peephole LSTM is an LSTM whose gates also see c: with zero peephole weights it is
    torch.nn's LSTM, bit for bit on the reference loop and to 1e-10 on the fused engine."""
    torch.manual_seed(0)
    ours = Recurrent("peephole_lstm", I, H, batch_first=True, dtype=DOUBLE)
    ref = torch.nn.LSTM(I, H, batch_first=True, dtype=DOUBLE)
    with torch.no_grad():
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            getattr(ours, name).copy_(getattr(ref, name))
        for name in ("weight_ci_l0", "weight_cf_l0", "weight_co_l0"):
            getattr(ours, name).zero_()
    x = torch.randn(B, T, I, dtype=DOUBLE)
    want = ref(x)[0]
    for engine in ("reference", "fused"):
        ours.engine = engine
        torch.testing.assert_close(ours(x)[0], want, atol=1e-10, rtol=0)


def test_layer_parameters_and_errors():
    layer = Recurrent("indrnn", I, H, num_layers=2, bidirectional=True)
    names = dict(layer.named_parameters())
    assert names["weight_hh_l1_reverse"].shape == (H,) and names["weight_ih_l1"].shape == (H, 2 * H)
    assert "peephole_lstm" in repr(Recurrent("peephole_lstm", I, H))
    from rnnkit.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown cell 'nope'"):
        Recurrent("nope", I, H)
    with pytest.raises(ConfigError, match="torch has no op|engine='torch'"):
        Recurrent("indrnn", I, H, engine="torch")(torch.randn(2, 3, I))


def test_the_readmes_own_cell_example():
    """The README's example of a cell of one's own (section "Cells of your own") runs as written:
    registered from plain Python, compiled, and its fused layer equal to its reference loop."""
    import pathlib
    import re

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Cells of your own", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    try:
        exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})  # noqa: S102
    finally:
        registry.REGISTRY.pop("minimal_gated", None)
