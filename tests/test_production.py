"""The fused engine at the dtype and widths it trains in: float32 gradients at H >= 64 on every
path the loops run (one thread, row shards, unit shards, OpenBLAS, products through BLAS), and
shapes drawn by hypothesis, fused against the reference loop.

float32 tolerance. Neither engine gives the exact result in float32: both round every product and
every gate, in different orders (the fused loops multiply-add along the depth in blocks, the
reference loop through torch's ops). The exact result is the reference loop in float64 over the
same float32 weights and inputs; each float32 result is held to it. The fused engine must be as
accurate as the reference loop's own float32 arithmetic: its error at most FACTOR times the
reference's, plus FLOOR float32 epsilons of the tensor's scale (for a tensor the reference happens
to get almost exact). Here the fused errors come out at 2-7 epsilons of the scale and within
2.2 times the reference's; a wrong formula, a missed term or a stale step is off by the size of
the term, thousands of epsilons at these sizes.
"""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rnnkit.layers
from test_kernels import CELLS as TORCH_CELLS, _force, _forward, _run

# torch.nn's cells, and those the registry adds (the fused engine's own specs, held here at the
# width and dtype they would train in too)
CELLS = {**TORCH_CELLS,
         **{name: (functools.partial(rnnkit.layers.Recurrent, name), {}) for name in ("peephole_lstm", "indrnn")}}
TWO_STATES = ("lstm", "peephole_lstm")

FACTOR = 4.0
FLOOR = 16
EPS32 = torch.finfo(torch.float32).eps
PATHS = ("one", "rows", "units", "units-pool", "units-late", "openblas", "shards")


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _grads(layer, engine, x, hx):
    """Outputs, final states and the gradients of x, hx and every parameter, for one engine: the
    loss weights each output by fixed float32 random numbers (the same in float64: cast)."""
    inputs = [x] + ([] if hx is None else list(hx) if isinstance(hx, tuple) else [hx])
    out, *states = _forward(layer, engine, x, hx, True)
    gen = torch.Generator().manual_seed(1)
    loss = sum((t * torch.randn(t.shape, generator=gen).to(t.dtype)).sum() for t in [out] + states)
    return [out] + states + list(torch.autograd.grad(loss, inputs + list(layer.parameters())))


def _float32_against_exact(name: str, H: int, T: int, I: int = 3, num_layers: int = 2) -> None:
    """Outputs, final states and every gradient of a float32 layer (fused and reference) against
    the same layer in float64 (the reference loop), as the module docstring says."""
    cls, extra = CELLS[name]
    torch.manual_seed(0)
    layer = cls(I, H, num_layers=num_layers, bidirectional=True, batch_first=True, **extra)
    exact_layer = copy.deepcopy(layer).double()
    x = torch.randn(4, T, I, requires_grad=True)
    x64 = x.detach().double().requires_grad_()
    LD = 2 * num_layers
    hx = [torch.randn(LD, 4, H, requires_grad=True) for _ in range(2 if name in TWO_STATES else 1)]
    hx64 = [h.detach().double().requires_grad_() for h in hx]
    as_hx = (lambda hs: tuple(hs)) if name in TWO_STATES else (lambda hs: hs[0])
    exact = _grads(exact_layer, "reference", x64, as_hx(hx64))
    fused = _grads(layer, "fused", x, as_hx(hx))
    reference = _grads(layer, "reference", x, as_hx(hx))
    for k, (e, f, r) in enumerate(zip(exact, fused, reference)):
        scale = e.abs().max().item()
        err_fused = (f.double() - e).abs().max().item()
        err_reference = (r.double() - e).abs().max().item()
        bound = FACTOR * err_reference + FLOOR * EPS32 * scale
        assert err_fused <= bound, (f"tensor {k} {tuple(e.shape)}: fused error {err_fused:.3g}, reference's "
                                    f"{err_reference:.3g}, scale {scale:.3g}")


@pytest.mark.parametrize("path", PATHS, indirect=["path"])
@pytest.mark.parametrize("name", CELLS)
def test_float32_gradients_at_width_64_on_every_path(name, path):
    """H = 64 (four float32 vectors of 16, or eight of 8: the vectorized gate loops and their
    remainders in the backward), 2 layers, both directions, packed lengths, given initial states."""
    _float32_against_exact(name, 64, 9)


@pytest.fixture
def path(request, monkeypatch):
    threads = torch.get_num_threads()
    # One thread where the path has one: with torch's threads as many as a busy machine's cores,
    # each of the reference loop's ops waited milliseconds for a thread off its core (~100x slower).
    torch.set_num_threads(1)
    _force(monkeypatch, request.param)
    if request.param.startswith("units"):  # 64 units: shards of 24, 16 and 24 (multiples of 8)
        from rnnkit.kernels import plan

        monkeypatch.setattr(plan, "UNITS_ALIGN", 8)
    yield request.param
    torch.set_num_threads(threads)


@pytest.mark.parametrize("path", ["one", "openblas"], indirect=["path"])
@pytest.mark.parametrize("name", [n for n in CELLS if n != "indrnn"])  # (IndRNN has no W_hh)
def test_float32_gradients_with_products_through_blas(name, path):
    """A float32 W_hh over layout.PACKED_MAX_BYTES (1025 to 2049 units by cell) goes through BLAS."""
    from rnnkit.kernels import layout

    gates = 4 if name in TWO_STATES else 3 if name.startswith("gru") else 1
    H_big = math.isqrt(layout.PACKED_MAX_BYTES // (4 * gates)) + 1
    _float32_against_exact(name, H_big, 6, num_layers=1)


@pytest.mark.parametrize("name", CELLS)
def test_float32_gradients_deeper_than_a_product_chunk(name, threads):
    """H = 300 units on unit shards: every product's depth runs in two chunks of layout.PACKED_DEPTH
    and the strips end in a narrow one."""
    from rnnkit.kernels import plan

    torch.set_num_threads(2)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(plan, "UNITS_MIN_WORK", 0)
        _float32_against_exact(name, 300, 6, num_layers=1)


FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(st.data())
def test_drawn_shapes_fused_against_reference(data):
    """Any batch, length, width, input width, depth, lengths, directions, cell and path: float64
    fused against the reference loop at 1e-9."""
    import test_kernels

    name = data.draw(st.sampled_from(sorted(CELLS)))
    path = data.draw(st.sampled_from(PATHS))
    B = data.draw(st.integers(1, 6))
    T = data.draw(st.integers(1, 12))
    H = data.draw(st.integers(1, 40))
    I = data.draw(st.integers(1, 5))
    num_layers = data.draw(st.integers(1, 3))
    bidirectional = data.draw(st.booleans())
    bias = data.draw(st.booleans())
    hx_given = data.draw(st.booleans())
    lengths = data.draw(st.lists(st.integers(1, T), min_size=B, max_size=B)) if data.draw(st.booleans()) else None
    cls, extra = CELLS[name]
    threads = torch.get_num_threads()
    try:
        with pytest.MonkeyPatch.context() as m:
            torch.set_num_threads(1)  # (see the path fixture)
            _force(m, path)
            m.setattr(test_kernels, "LENGTHS", torch.tensor(lengths if lengths else [T] * B))
            torch.manual_seed(0)
            layer = cls(I, H, num_layers=num_layers, bias=bias, batch_first=True, bidirectional=bidirectional,
                        dtype=torch.float64, **extra)
            x = torch.randn(B, T, I, dtype=torch.float64, requires_grad=True)
            hx = None
            if hx_given:
                LD = num_layers * (2 if bidirectional else 1)
                hs = [torch.randn(LD, B, H, dtype=torch.float64, requires_grad=True)
                      for _ in range(2 if name in TWO_STATES else 1)]
                hx = tuple(hs) if name in TWO_STATES else hs[0]
            ref = _run(layer, "reference", x, hx, lengths is not None)
            fused = _run(layer, "fused", x, hx, lengths is not None)
    finally:
        torch.set_num_threads(threads)
    for k, (a, b) in enumerate(zip(ref, fused)):
        torch.testing.assert_close(b, a, atol=1e-9, rtol=0, msg=lambda m: f"tensor {k}: {m}")
