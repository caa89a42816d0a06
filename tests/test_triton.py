"""engine="triton" (rnnkit.triton_engine) without a GPU: its kernels in Triton's interpreter on CPU
tensors, held to the reference loop in float64 (and gradcheck) and float32, one program and several,
one tile of units and several, with lengths and in reverse; how layers choose it; its errors."""

from __future__ import annotations

import copy
import os
import pathlib
import re
import subprocess
import sys

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

pytest.importorskip("triton", reason="the triton extra (make test installs it)")
if os.environ.get("TRITON_INTERPRET") != "1":  # (conftest sets it before anything imports Triton)
    pytest.skip("Triton's interpreter is off (TRITON_INTERPRET is set to another value)", allow_module_level=True)

import rnnkit  # noqa: E402
from rnnkit import triton_engine  # noqa: E402
from rnnkit.errors import ConfigError  # noqa: E402
from rnnkit.kernels import cells as kernel_cells  # noqa: E402
from rnnkit.layers import choose_engine, run_reference  # noqa: E402
from rnnkit.kernels.ops import sigmoid  # noqa: E402
from test_new_cells import MGU  # noqa: E402

CELLS = triton_engine.CELLS
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3, "gru_reset_before": 3}


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _force(mode: str, monkeypatch) -> str:
    """The whole time loop in one kernel holding W_hh ("held": all units in one tile, the default of
    small layers), the same reading W_hh each step ("persistent", hidden sizes up to
    PERSISTENT_MAX_UNITS), or a GEMM and a kernel per step ("per-step", above)."""
    if mode == "persistent":
        monkeypatch.setattr(triton_engine, "HOLD_MAX_ELEMENTS", 0)
    elif mode == "per-step":
        monkeypatch.setattr(triton_engine, "PERSISTENT_MAX_UNITS", 0)
    return mode


@pytest.fixture(params=["held", "persistent", "per-step"])
def mode(request, monkeypatch):
    return _force(request.param, monkeypatch)


@pytest.fixture(params=["persistent", "per-step"])
def wide_mode(request, monkeypatch):
    """(Where H is wider than a tile, nothing is held.)"""
    return _force(request.param, monkeypatch)


def _inputs(name, B, T, I, H, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    G = GATES[name]

    def rand(*shape, scale=H ** -0.5):  # (torch.nn's scale of initial weights)
        return (torch.randn(*shape, generator=gen, dtype=dtype) * scale).requires_grad_()

    x = rand(B, T, I, scale=1.0)
    weights = (rand(G * H, I), rand(G * H, H), rand(G * H), rand(G * H))
    state = tuple(rand(B, H) for _ in range(2 if name == "lstm" else 1))
    return x, weights, state


def _outputs_and_grads(run, name, x, weights, state, lengths, reverse):
    out, final = run(kernel_cells.get(name), x, state, weights, lengths, reverse)
    gen = torch.Generator().manual_seed(1)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum() for t in (out, *final))
    return [t.detach() for t in (out, *final, *torch.autograd.grad(loss, [x, *weights, *state]))]


def _compare(name, B, T, I, H, dtype, lengths=None, reverse=False):
    """The largest difference of outputs, final states and every gradient from the reference loop's,
    relative to the tensor's largest value where that is over 1."""
    x, weights, state = _inputs(name, B, T, I, H, dtype)
    got = _outputs_and_grads(triton_engine.run_triton, name, x, weights, state, lengths, reverse)
    want = _outputs_and_grads(run_reference, name, x, weights, state, lengths, reverse)
    return max(float((g - w).abs().max() / w.abs().max().clamp(min=1)) for g, w in zip(got, want))


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("case", ["plain", "lengths-reverse"])
def test_matches_reference_float64(name, case, mode):
    lengths = torch.tensor([4, 2, 5]) if case != "plain" else None
    assert _compare(name, 3, 5, 2, 5, torch.float64, lengths, reverse=case != "plain") < 1e-12


@pytest.mark.parametrize("name", CELLS)
def test_several_programs_and_tiles_float64(name, wide_mode, monkeypatch):
    """B=18 rows: two programs (16 rows each, the second mostly masked); H=20 units in tiles of 16:
    every product and pointwise loop over two tiles, the second masked."""
    monkeypatch.setattr(triton_engine, "BLOCK_UNITS", 16)
    lengths = torch.tensor([3, 1, 2] * 6)
    assert _compare(name, 18, 3, 3, 20, torch.float64, lengths) < 1e-11
    assert _compare(name, 18, 3, 3, 20, torch.float64, reverse=True) < 1e-11


@pytest.mark.parametrize("name", CELLS)
def test_matches_reference_float32(name, wide_mode):
    """float32, the dtype the CLI trains in, at a width of two tiles of 64 units."""
    assert _compare(name, 4, 4, 3, 70, torch.float32, torch.tensor([4, 1, 3, 2])) < 2e-5


@pytest.mark.parametrize("name", CELLS)
def test_gradcheck(name, mode):
    x, weights, state = _inputs(name, 2, 3, 2, 3, torch.float64)
    cell = kernel_cells.get(name)

    def fn(x, *rest):
        out, final = triton_engine.run_triton(cell, x, tuple(rest[len(weights):]), tuple(rest[:len(weights)]),
                                              torch.tensor([3, 2]))
        return (out, *final)

    assert torch.autograd.gradcheck(fn, (x, *weights, *state), eps=1e-6, atol=1e-7, fast_mode=True)


def test_every_kernel_compiles_for_a_gpu(tmp_path):
    """Triton's real compiler (not the interpreter, which runs whatever Python runs) turns every
    variant the engine launches into sm_90 machine code (tests/triton_compile.py, its own process)."""
    script = pathlib.Path(__file__).parent / "triton_compile.py"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")  # (compiled here, not found in a cache)
    done = subprocess.run([sys.executable, str(script), "90"], env=env, capture_output=True, text=True, timeout=900)
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and lines and all(line.startswith("ok ") for line in lines), done.stdout + done.stderr
    assert len(lines) == 42  # the 5 cells in float32 (32 launches), 3 pointwise cells (6), 4 in float64
    spilled = {line.split(":")[0]: int(re.search(r"(\d+) bytes spilled", line).group(1)) for line in lines}
    assert max(spilled.values()) <= 64, spilled  # (a few bytes at most: the loops stay in registers)


def _layer_grads(layer, x):
    out, h = layer(x)
    if isinstance(out, torch.nn.utils.rnn.PackedSequence):
        out = out.data
    states = h if isinstance(h, tuple) else (h,)
    loss = out.pow(2).sum() + sum(s.sum() for s in states)
    return [t.detach() for t in (out, *states, *torch.autograd.grad(loss, list(layer.parameters())))]


@pytest.mark.parametrize("make", [
    lambda: rnnkit.GRU(3, 7, num_layers=2, bidirectional=True, reset_after=False, batch_first=True),
    lambda: rnnkit.LSTM(3, 7, num_layers=2, bidirectional=True, batch_first=True),
    lambda: rnnkit.RNN(3, 7, nonlinearity="relu", bias=False),
], ids=["gru-reset-before", "lstm", "rnn-relu"])
def test_layers_with_the_triton_engine(make):
    """Stacked, bidirectional, without biases, time-major, a PackedSequence: the layer's machinery
    around the engine, against the same layer on the reference loop."""
    torch.manual_seed(0)
    layer = make().double()
    layer.engine = "triton"
    ref = copy.deepcopy(layer)
    ref.engine = "reference"
    x = torch.randn(4, 6, 3, dtype=torch.float64)
    packed = pack_padded_sequence(x if layer.batch_first else x.transpose(0, 1), torch.tensor([6, 3, 5, 1]),
                                  batch_first=layer.batch_first, enforce_sorted=False)
    for inp in (x, packed):
        for g, w in zip(_layer_grads(layer, inp), _layer_grads(ref, inp)):
            assert torch.allclose(g, w, atol=1e-12, rtol=0)


def test_custom_rnn_with_the_triton_engine():
    """The seed's CustomRNN (transposed weights, no b_hh) through pick_engine."""
    torch.manual_seed(0)
    model = rnnkit.CustomRNN(1, 8, 1, engine="triton").double()
    ref = copy.deepcopy(model)
    ref.engine = "reference"
    x = torch.randn(5, 9, 1, dtype=torch.float64)
    got, want = model(x), ref(x)
    assert torch.allclose(got, want, atol=1e-13, rtol=0)
    g = torch.autograd.grad(got.sum(), list(model.parameters()))
    w = torch.autograd.grad(want.sum(), list(ref.parameters()))
    assert all(torch.allclose(a, b, atol=1e-12, rtol=0) for a, b in zip(g, w))


def test_double_backward_raises():
    """Its backward is not differentiable again: a gradient penalty through it fails loudly instead
    of being silently wrong (its gradient's dependence on x runs through the saved states, which
    once_differentiable does not see where the incoming gradient is a constant, as here)."""
    layer = rnnkit.GRU(2, 4, reset_after=False, engine="triton", batch_first=True).double()
    x = torch.randn(2, 3, 2, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(layer(x)[0].sum(), x, create_graph=True)
    (grad,) = torch.autograd.grad(layer(x)[0].sum(), x)  # (a first backward is fine)
    assert grad.shape == x.shape


def test_auto_takes_triton_where_cudnn_cannot(monkeypatch):
    """On a GPU (here: the engine said to serve), "auto" takes torch's op for torch.nn's cells and the
    Triton kernels for the rest; under torch.func, the reference loop."""
    monkeypatch.setattr(triton_engine, "serves", lambda cell, x, lengths, projection=False: True)
    x = torch.randn(2, 3, 4, dtype=torch.float16)  # (a dtype the fused engine does not run)
    assert choose_engine("auto", x, None, True, cell=kernel_cells.get("gru")) == "torch"
    assert choose_engine("auto", x, None, False, cell=kernel_cells.get("gru_reset_before")) == "triton"
    assert torch.func.vmap(lambda row: torch.tensor(0) if choose_engine(
        "auto", row.unsqueeze(0), None, False, cell=kernel_cells.get("gru_reset_before")) == "reference"
        else torch.tensor(1))(x).sum() == 0


def test_errors_say_what_runs(monkeypatch):
    with pytest.raises(ConfigError, match="not LSTM with proj_size"):
        rnnkit.LSTM(3, 4, proj_size=2, engine="triton")(torch.randn(2, 3, 3))
    with pytest.raises(ConfigError, match="float32/float64 CUDA tensors"):
        rnnkit.GRU(3, 4, engine="triton").half()(torch.randn(2, 3, 3).half())
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ConfigError, match=r"CPU tensors only under TRITON_INTERPRET=1"):
        rnnkit.GRU(3, 4, engine="triton")(torch.randn(2, 3, 3))
    with pytest.raises(ConfigError, match="unknown engine"):
        rnnkit.GRU(3, 4, engine="tritn")


# Cells made by rnnkit.kernels.cells.pointwise: their Python functions translated into Triton ones
# (rnnkit.triton_pointwise): the peephole LSTM (two states, a saved value, three unit parameters),
# IndRNN (no W_hh, a conditional expression) and a user's minimal gated unit.
POINTWISE = ("peephole_lstm", "indrnn", "mgu")


@pytest.fixture
def mgu_registered():
    kernel_cells.register(MGU)
    yield
    kernel_cells.REGISTRY.pop("mgu", None)


@pytest.mark.parametrize("name", POINTWISE)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_pointwise_cells_match_reference(name, dtype, mgu_registered, monkeypatch):
    """Both directions over a PackedSequence of uneven lengths, 18 rows (two programs) of H=20 units
    in tiles of 16."""
    monkeypatch.setattr(triton_engine, "BLOCK_UNITS", 16)
    torch.manual_seed(0)
    layer = rnnkit.Recurrent(name, 3, 20, bidirectional=True, batch_first=True, engine="triton").to(dtype)
    ref = copy.deepcopy(layer)
    ref.engine = "reference"
    x = torch.randn(18, 4, 3, dtype=dtype)
    packed = pack_padded_sequence(x, torch.tensor([4, 3, 1, 2] * 4 + [4, 2]), batch_first=True,
                                  enforce_sorted=False)
    tolerance = 1e-12 if dtype == torch.float64 else 2e-5
    for g, w in zip(_layer_grads(layer, packed), _layer_grads(ref, packed)):
        assert float((g - w).abs().max() / w.abs().max().clamp(min=1)) < tolerance, (g - w).abs().max()


@pytest.mark.parametrize("name", POINTWISE)
def test_pointwise_gradcheck(name, mgu_registered):
    torch.manual_seed(0)
    layer = rnnkit.Recurrent(name, 2, 3, batch_first=True, engine="triton").double()
    x = torch.randn(2, 3, 2, dtype=torch.float64, requires_grad=True)
    params = list(layer.parameters())

    def fn(x, *weights):
        out, h = torch.func.functional_call(layer, dict(zip([n for n, _ in layer.named_parameters()], weights)), (x,))
        return (out, *(h if isinstance(h, tuple) else (h,)))

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-7, fast_mode=True)


def _untranslatable_forward(pre, prev, prm):
    import math  # noqa: F401 - (the point: a name the translation cannot follow)

    a = pre[0]
    return (math.tanh(a) + sigmoid(a) * 0.0,), (a,)


def _untranslatable_backward(keep, prev, new, prm, d_new):
    return (d_new[0],), (d_new[0] * 0.0,), ()


def test_a_cell_it_cannot_translate_is_refused_by_name():
    """A pointwise cell whose functions read something beyond rnnkit.kernels.ops and numbers: the
    engine says what, and "auto" does not take it."""
    cell = kernel_cells.pointwise("untranslatable", 1, _untranslatable_forward, _untranslatable_backward)
    x = torch.randn(2, 3, 4)
    assert not triton_engine.serves(cell, x, None)
    assert "reads 'math'" in triton_engine.refusal(cell, x, None)
