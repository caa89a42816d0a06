"""The fused engine held to the reference time loop: outputs, states and every gradient.

float64 within 1e-9 across cells and layer configurations, float32 within 1e-5, gradcheck of the
autograd.Function, and the engine choice (auto falls back, fused refuses what it cannot run).
"""

from __future__ import annotations

import ctypes
import functools
import math
import os

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit
from rnnkit import kernels
from rnnkit.errors import ConfigError
from rnnkit.kernels import cells, kind_code
from rnnkit.kernels.fused import FusedLayer
from rnnkit.layers import pick_engine, run_reference

# (layer class, extra constructor arguments): every cell and both variants of RNN and GRU.
CELLS = {
    "rnn": (rnnkit.RNN, {}),
    "rnn-relu": (rnnkit.RNN, {"nonlinearity": "relu"}),
    "lstm": (rnnkit.LSTM, {}),
    "gru": (rnnkit.GRU, {}),
    "gru-reset-before": (rnnkit.GRU, {"reset_after": False}),
}
# (num_layers, bidirectional, bias, hx given, lengths: None | "padded" | "packed", batch_first)
CONFIGS = [
    (1, False, True, False, None, True),
    (1, False, False, True, None, False),
    (2, True, True, True, None, False),
    (3, False, True, False, "packed", False),
    (2, True, False, False, "packed", True),
    (1, True, True, True, "packed", False),
]
B, T, I, H = 4, 6, 3, 5
LENGTHS = torch.tensor([6, 2, 5, 1])  # unsorted, one full length, one single step


def _cell(name: str):
    """The fused engine's cell of a CELLS name."""
    return cells.get({"rnn": "rnn_tanh", "rnn-relu": "rnn_relu", "gru-reset-before": "gru_reset_before"}.get(name, name))


def _forward(layer, engine, x, hx, packed):
    """Outputs and final states, for one engine."""
    layer.engine = engine
    inp = pack_padded_sequence(x, LENGTHS, batch_first=layer.batch_first, enforce_sorted=False) if packed else x
    out, state = layer(inp, hx)
    return [out.data if packed else out] + (list(state) if isinstance(state, tuple) else [state])


def _run(layer, engine, x, hx, packed):
    """Outputs, final states and the gradients of every input and parameter, for one engine."""
    inputs = [x] + ([] if hx is None else list(hx) if isinstance(hx, tuple) else [hx])
    out, *states = _forward(layer, engine, x, hx, packed)
    # Fixed random weights on every output, so no gradient can hide behind a plain sum.
    gen = torch.Generator().manual_seed(1)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum() for t in [out] + states)
    grads = torch.autograd.grad(loss, inputs + list(layer.parameters()))
    return [out] + states + list(grads)


def _compare(name, config, dtype, atol, H=H, I=I, T=T):
    cls, extra = CELLS[name]
    num_layers, bidirectional, bias, hx_given, lengths, batch_first = config
    torch.manual_seed(0)
    layer = cls(I, H, num_layers=num_layers, bias=bias, batch_first=batch_first,
                bidirectional=bidirectional, dtype=dtype, **extra)
    shape = (B, T, I) if batch_first else (T, B, I)
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    hx = None
    if hx_given:
        LD = num_layers * (2 if bidirectional else 1)
        hs = [torch.randn(LD, B, H, dtype=dtype, requires_grad=True) for _ in range(2 if name == "lstm" else 1)]
        hx = tuple(hs) if name == "lstm" else hs[0]
    ref = _run(layer, "reference", x, hx, lengths == "packed")
    fused = _run(layer, "fused", x, hx, lengths == "packed")
    assert len(ref) == len(fused)
    for k, (a, b) in enumerate(zip(ref, fused)):
        torch.testing.assert_close(b, a, atol=atol, rtol=0, msg=lambda m: f"tensor {k}: {m}")
    # Inference (no activations kept; with one input feature, each step projected as it comes): the
    # training forward's results (not always its bits: BLAS may round a product over arrays of
    # other strides differently).
    with torch.no_grad():
        inference = _forward(layer, "fused", x, hx, lengths == "packed")
    for k, (a, b) in enumerate(zip(fused, inference)):
        torch.testing.assert_close(b, a, atol=atol, rtol=0, msg=lambda m: f"inference tensor {k}: {m}")


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("name", CELLS)
def test_fused_matches_reference_float64(name, config):
    _compare(name, config, torch.float64, 1e-9)


# How the loops run (rnnkit.kernels.plan, launch): "one" thread with the default BLAS (MKL where torch
# has it); with MKL, hidden-unit shards as tasks of a team of torch's OpenMP threads ("units"), the
# same on the pool's Python threads ("units-pool") or with the team's body run on this thread alone,
# which then runs every shard's tasks ("units-late"), and batch-row shards on the team ("rows");
# scipy's OpenBLAS on one thread ("openblas") and over batch-row shards on the pool ("shards"). Each
# is forced on these tiny layers by moving the thresholds.
PATHS = ("one", "shards", "units", "units-pool", "units-late", "rows", "openblas")


def _one_thread_team(real):
    """torch's OpenMP runtime ``real``, but a 'team' that runs the body once on the calling thread
    (outside a parallel region)."""
    body = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
    return real._replace(parallel=lambda fn, data, n, flags: body(fn)(data))


def _force(monkeypatch, name: str) -> None:
    from rnnkit.kernels import blas, launch, plan

    if name in ("shards", "openblas"):  # OpenBLAS, over row shards or on one thread
        monkeypatch.setattr(blas, "blas", functools.cache(blas._openblas))
        monkeypatch.setattr(plan, "SHARD_MIN_WORK", 0 if name == "shards" else 1 << 60)
        monkeypatch.setattr(plan, "SHARD_MIN_ROWS", 1)
        torch.set_num_threads(3)  # B=4 rows: shards of 1, 2 and 1 rows
    elif name == "rows":
        monkeypatch.setattr(plan, "TEAM_ROWS_MIN_WORK", 0)
        monkeypatch.setattr(plan, "SHARD_MIN_ROWS", 1)
        torch.set_num_threads(3)
    elif name.startswith("units"):
        if name == "units-pool":
            monkeypatch.setattr(launch, "openmp", lambda: None)
        elif name == "units-late" and launch.openmp() is not None:
            monkeypatch.setattr(launch, "openmp", functools.partial(_one_thread_team, launch.openmp()))
        monkeypatch.setattr(plan, "UNITS_MIN_WORK", 0)
        monkeypatch.setattr(plan, "UNITS_ALIGN", 1)
        torch.set_num_threads(3)  # H=5 units: shards of 2, 1 and 2 units


@pytest.fixture
def path(request, monkeypatch):
    threads = torch.get_num_threads()
    _force(monkeypatch, request.param)
    yield request.param
    torch.set_num_threads(threads)


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("config", [CONFIGS[2], CONFIGS[4]], ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("name", CELLS)
def test_every_path_matches_reference(name, config, path):
    from rnnkit.kernels import blas, launch, plan as plans

    plan = plans.plan(B, H, H)
    mkl = blas.blas().name == "mkl"
    if path == "shards" or (path == "rows" and mkl and launch.openmp()):
        assert [s[:2] for s in plan.shards] == [(0, 1), (1, 3), (3, 4)] and plan.parties == 1
    elif path.startswith("units") and mkl:
        assert [s[2:] for s in plan.shards] == [(0, 2), (2, 3), (3, 5)] and plan.parties == 3
    else:
        assert len(plan.shards) == 1
    _compare(name, config, torch.float64, 1e-9)


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("name", CELLS)
def test_one_input_feature_on_every_path(name, path):
    """One input feature: the loops project it themselves (forward) and add up W_ih's gradient, a
    weighted sum then, with the biases' as they go (backward), each shard into its own row of sums;
    packed lengths, so the dead steps must add nothing."""
    assert CONFIGS[5][2] and CONFIGS[5][4] == "packed"
    _compare(name, CONFIGS[5], torch.float64, 1e-9, I=1)


@pytest.mark.parametrize("H_", [H, 100], ids=["states-in-place", "states-copied"])
@pytest.mark.parametrize("path", ["one", "rows", "shards"], indirect=True)
@pytest.mark.parametrize("name", CELLS)
def test_weights_grad_from_the_loop_matches_reference(name, path, H_):
    """On row shards each shard's loop makes its share of dW_hh itself after its steps
    (loops: shard_weights_grad) and the backward adds the shares up: over the states in hs, row by
    row, for a W_hh within layout.DIRECT_BYTES, else over the h_prev the loop copies (100 units in
    float64: 80-320 KB); 70 steps, so one thread's product is deeper than layout.PACKED_DEPTH and
    runs in chunks. GRU with the reset gate before the product keeps torch's two products."""
    from rnnkit.kernels import blas, fused, launch, layout, plan as plans

    cell = _cell(name)
    plan = plans.plan(B, H_, cell.gates * H_)
    assert fused._weights_grad_in_loop(cell, plan) == (name != "gru-reset-before")
    sharded = path == "shards" or (path == "rows" and blas.blas().name == "mkl" and launch.openmp() is not None)
    assert len(plan.shards) == (3 if sharded else 1) and B * 70 > layout.PACKED_DEPTH  # (rows: a team's, MKL's)
    assert (cell.gates * H_ * H_ * 8 <= layout.DIRECT_BYTES) == (H_ == H)
    _compare(name, CONFIGS[2], torch.float64, 1e-9, H=H_, T=70)


@pytest.mark.parametrize("path", ["one", "openblas"], indirect=True)
@pytest.mark.parametrize("name", CELLS)
def test_products_through_blas_match_reference(name, path):
    """The layers above run every step's product in the loops' own loop over a packed W_hh; a W_hh
    over layout.PACKED_MAX_BYTES (float64, 730 to 1449 units by cell) goes to BLAS instead."""
    from rnnkit.kernels import fused, layout

    gates = _cell(name).gates
    H_big = math.isqrt(layout.PACKED_MAX_BYTES // (8 * gates)) + 1
    assert fused.products(gates * H_big, H_big, 8) == layout.THROUGH_BLAS
    _compare(name, CONFIGS[4], torch.float64, 1e-9, H=H_big)


@pytest.mark.parametrize("path", ["one", "units"], indirect=True)
@pytest.mark.parametrize("name", CELLS)
def test_products_deeper_than_a_chunk_match_reference(name, path):
    """260 units: every product's depth is past layout.PACKED_DEPTH (the forward's too), so the
    packed loop adds several chunks, and 260 is no multiple of a strip: the last strip is narrower."""
    from rnnkit.kernels import layout

    assert 260 > layout.PACKED_DEPTH and 260 % 16  # (a float32 strip: 16 or 32 columns)
    _compare(name, CONFIGS[2], torch.float64, 1e-9, H=260)


def _product(dtype: str, name: str):
    """A product entry point of the compiled loops (rnnkit.kernels.products), callable with ints."""
    import inspect

    from rnnkit.kernels import compiled, products

    fn = products.entries(np.dtype(dtype).type(0))[name]  # (its signature)
    count = len(inspect.signature(fn).parameters)
    return ctypes.CFUNCTYPE(None, *[ctypes.c_int64] * count)(compiled.products(dtype)[name])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_packed_products_match_numpy(dtype):
    """The loops' product over a packed matrix against numpy: W's columns packed (the backward's
    B = W[rows, units]) and W's rows packed as columns (the forward's B = W[gate rows]^T), strips
    narrower than a full one, depths of several chunks, with and without adding C."""
    pack_columns, pack_rows, packed_mm = (_product(dtype, n) for n in ("pack_columns", "pack_rows", "packed_mm"))
    rng = np.random.default_rng(0)
    tol = 1e-5 if dtype == "float32" else 1e-12
    isz = np.dtype(dtype).itemsize
    starts = np.zeros(64, np.uint64)
    # rows and columns left over after every block size, with or without AVX-512 (products.ROW_BLOCKS,
    # small_mm's widths): 13 = 8 + 4 + 1 rows, 61 = 32 + 16 + 8 + 5 columns
    for m, depth, n in [(1, 1, 1), (5, 300, 37), (9, 600, 16), (4, 256, 3), (7, 20, 50), (13, 40, 61), (16, 64, 64),
                        (12, 33, 29)]:
        W = rng.standard_normal((depth + 4, n + 6)).astype(dtype)
        a = rng.standard_normal((m, depth + 2)).astype(dtype)
        for accumulate in (False, True):
            c = rng.standard_normal((m, n)).astype(dtype)
            want = a[:, :depth].astype(np.float64) @ W[2:2 + depth, 3:3 + n] + (c if accumulate else 0)
            P = np.full(W.size + 3, np.nan, dtype)  # (nothing read but what was packed)
            pack_columns(W.ctypes.data, W.shape[0], W.shape[1], P.ctypes.data + 3 * isz, 2, depth, 3, n)
            packed_mm(a.ctypes.data, a.shape[1], P.ctypes.data + 3 * isz, depth, n, c.ctypes.data, c.shape[1], m,
                      int(accumulate))
            np.testing.assert_allclose(c, want, rtol=tol, atol=tol * depth)
    for m, H, nu, blocks in [(3, 5, 2, 4), (6, 300, 20, 3), (2, 17, 17, 1)]:
        W = rng.standard_normal((4 * H, H)).astype(dtype)
        a = rng.standard_normal((m, H)).astype(dtype)
        cols = [k * H + 1 + u for k in range(blocks) for u in range(nu)]  # gate k, unit u, from row 1
        for accumulate in (False, True):
            c = rng.standard_normal((m, blocks * nu)).astype(dtype)
            want = a.astype(np.float64) @ W[cols].T + (c if accumulate else 0)
            P = np.full(W.size + 5, np.nan, dtype)
            pack_rows(W.ctypes.data, W.shape[0], H, P.ctypes.data + 5 * isz, 1, nu, blocks, starts.ctypes.data)
            packed_mm(a.ctypes.data, H, P.ctypes.data + 5 * isz, H, blocks * nu, c.ctypes.data, c.shape[1], m,
                      int(accumulate))
            np.testing.assert_allclose(c, want, rtol=tol, atol=tol * H)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_small_products_match_numpy(dtype):
    """The loops' micro-kernel against numpy: every remainder of its row by 2-vector blocks, row
    strides wider than the rows, A row-major and A stored transposed (the backward's dW_hh reads dG
    so), with and without adding C."""
    mm = _product(dtype, "mm")
    rng = np.random.default_rng(0)
    tol = 1e-5 if dtype == "float32" else 1e-12
    for m, n, k in [(1, 1, 1), (4, 16, 8), (5, 37, 13), (7, 8, 3), (9, 50, 33), (3, 4, 200), (12, 130, 2),
                    (13, 61, 40)]:
        b = rng.standard_normal((k, n + 5)).astype(dtype)
        for transposed in (False, True):
            # rows wider than the k used (or, transposed, than the m used)
            a = rng.standard_normal((k, m + 3) if transposed else (m, k + 3)).astype(dtype)
            a_mk = a[:, :m].T if transposed else a[:, :k]
            lda, ka = (1, a.shape[1]) if transposed else (a.shape[1], 1)
            for accumulate in (False, True):
                c = rng.standard_normal((m, n + 2)).astype(dtype)
                before = c.copy()
                want = a_mk.astype(np.float64) @ b[:, :n] + (c[:, :n] if accumulate else 0)
                mm(a.ctypes.data, lda, ka, b.ctypes.data, b.shape[1], c.ctypes.data, c.shape[1], m, n, k,
                   int(accumulate))
                np.testing.assert_allclose(c[:, :n], want, rtol=tol, atol=tol * k)
                assert np.array_equal(c[:, n:], before[:, n:])  # nothing written past the n columns


@pytest.mark.parametrize("name", ["lstm", "gru-reset-before"])
def test_unit_shards_give_the_same_bits_whichever_thread_runs_them(name, monkeypatch):
    """A task's arithmetic does not depend on the thread that runs it: unit shards on a team give
    bit for bit what they give when one thread runs every task."""
    from rnnkit.kernels import blas, launch

    if launch.openmp() is None or blas.blas().name != "mkl":
        pytest.skip("unit shards need MKL and torch's OpenMP runtime")
    threads = torch.get_num_threads()
    try:
        results = {}
        for path in ("units", "units-late"):
            with monkeypatch.context() as m:
                _force(m, path)
                cls, extra = CELLS[name]
                torch.manual_seed(0)
                layer = cls(I, H, num_layers=2, bidirectional=True, dtype=torch.float32, **extra)
                results[path] = _run(layer, "fused", torch.randn(T, B, I, requires_grad=True), None, False)
        for a, b in zip(results["units"], results["units-late"]):
            torch.testing.assert_close(b, a, atol=0, rtol=0)
    finally:
        torch.set_num_threads(threads)


def test_blas_found_and_checked():
    from rnnkit.kernels import blas

    chosen = blas.blas()
    assert chosen.name in ("mkl", "openblas") and blas._works(chosen)
    assert blas._works(blas._openblas())
    if os.environ.get("RNNKIT_BLAS") == "scipy":  # (make test-portable's second run)
        assert chosen.name == "openblas"


WITHOUT_MKL = """
import torch
import rnnkit
from rnnkit.kernels import blas, fused, layout
assert blas.blas().name == "openblas", blas.blas().name
torch.manual_seed(0)
for H, limit in ((16, layout.PACKED_MAX_BYTES), (24, 0)):  # W_hh packed in the loops; every product through BLAS
    fused.PACKED_MAX_BYTES = limit
    assert (fused.products(4 * H, H, 4) == layout.THROUGH_BLAS) == (limit == 0)
    fast = rnnkit.LSTM(3, H, batch_first=True, engine="fused")
    slow = rnnkit.LSTM(3, H, batch_first=True, engine="reference")
    slow.load_state_dict(fast.state_dict())
    x, weights = torch.randn(4, 7, 3), torch.randn(4, 7, H)
    got = []
    for layer in (fast, slow):
        xi = x.clone().requires_grad_()
        out, (h, c) = layer(xi)
        ((out * weights).sum() + h.sum() + c.sum()).backward()
        got.append([out, h, c, xi.grad, *(p.grad for p in layer.parameters())])
    for a, b in zip(*got):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
"""


def test_the_path_without_mkl_as_the_process_chooses_it():
    """RNNKIT_BLAS=scipy in a fresh process: scipy's OpenBLAS is the loops' BLAS (the path of a torch
    without MKL, which the tests otherwise force by patching), and a fused float32 LSTM's outputs,
    states and gradients match the reference loop, with W_hh packed and with it through BLAS."""
    import subprocess
    import sys

    env = dict(os.environ, RNNKIT_BLAS="scipy")
    done = subprocess.run([sys.executable, "-c", WITHOUT_MKL], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_shard_pool_is_remade_after_fork():
    """A forked child (a DataLoader worker, say) has none of the parent's pool threads."""
    import os

    from rnnkit.kernels import launch

    pool = launch._executor(1)
    assert launch._executor(1) is pool
    pid = os.fork()
    if pid == 0:
        ok = launch._executor(1) is not pool and launch._executor(1).submit(lambda: 7).result(timeout=10) == 7
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize("name", CELLS)
def test_fused_matches_reference_float32(name):
    _compare(name, (2, True, True, True, "packed", True), torch.float32, 1e-5)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("name", CELLS)
def test_gradcheck(name, reverse):
    kind = name.split("-")[0]
    cell = _cell(name)
    G = cell.gates
    torch.manual_seed(0)
    b, t, i, h = 3, 4, 2, 3
    # Weights away from zero pre-activations, where relu's derivative jumps.
    args = [torch.randn(b, t, i), torch.randn(b, h), torch.randn(b, h) if kind == "lstm" else None,
            torch.randn(G * h, i), torch.randn(G * h, h), torch.randn(G * h), torch.randn(G * h)]
    args = [None if a is None else a.double().requires_grad_() for a in args]
    lengths = torch.tensor([4, 1, 3])

    def f(*tensors):
        out, h_n, c_n = FusedLayer.apply(cell, reverse, lengths, *tensors)
        return (out, h_n) if c_n is None else (out, h_n, c_n)

    assert torch.autograd.gradcheck(f, tuple(args), atol=1e-7)


@pytest.mark.parametrize("width", [1, 2, 8, 9])
@pytest.mark.parametrize("name", ["lstm", "gru", "gru-reset-before"])
def test_every_input_width_form(name, width):
    """The input projection and its gradients take a different form by input width (an outer
    product at 1; transposed products at 2-8): each against the reference loop, with and without
    biases, and every gradient laid out as its tensor (DDP's gradient buckets check the strides)."""
    cls, extra = CELLS[name]
    for bias in (True, False):
        torch.manual_seed(0)
        layer = cls(width, H, bias=bias, batch_first=True, dtype=torch.float64, **extra)
        x = torch.randn(B, T, width, dtype=torch.float64, requires_grad=True)
        ref, fused = (_run(layer, engine, x, None, False) for engine in ("reference", "fused"))
        for k, (a, b) in enumerate(zip(ref, fused)):
            torch.testing.assert_close(b, a, atol=1e-9, rtol=0, msg=lambda m: f"tensor {k}: {m}")
        tensors = [x, *layer.parameters()]
        for grad, tensor in zip(fused[-len(tensors):], tensors):
            assert grad.stride() == tensor.stride(), (grad.shape, grad.stride(), tensor.stride())


def test_transposed_weights_without_b_hh():
    """CustomRNN's call: non-contiguous W_ih.t(), W_hh.t() and b_hh None."""
    torch.manual_seed(0)
    x = torch.randn(4, 7, 2, dtype=torch.float64, requires_grad=True)
    W_ih, W_hh = (torch.randn(n, H, dtype=torch.float64, requires_grad=True) for n in (2, H))
    bias = torch.randn(H, dtype=torch.float64, requires_grad=True)
    h0 = (torch.zeros(4, H, dtype=torch.float64),)
    results = []
    for run in (run_reference, kernels.run_fused):
        _, (h_T,) = run("rnn", x, h0, (W_ih.t(), W_hh.t(), bias, None))
        results.append([h_T, *torch.autograd.grad(h_T.sum(), [x, W_ih, W_hh, bias])])
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, atol=1e-9, rtol=0)


@pytest.mark.parametrize("width", [1, I])
@pytest.mark.parametrize("name", CELLS)
def test_inference_matches_training_forward(name, width):
    """Bit for bit, with the loops' own products: one input feature projected in each step (with no
    activations to keep) has the roundings of the pass before the loop."""
    cls, extra = CELLS[name]
    torch.manual_seed(0)
    layer = cls(width, H, num_layers=2, bidirectional=True, engine="fused", dtype=torch.float64, **extra)
    x = torch.randn(B, 40, width, dtype=torch.float64)
    trained = _forward(layer, "fused", x, None, False)
    with torch.no_grad():
        inferred = _forward(layer, "fused", x, None, False)
    for a, b in zip(trained, inferred):
        torch.testing.assert_close(b, a, atol=0, rtol=0)


@pytest.mark.parametrize("engine", ["fused", "auto"])
def test_double_backward_is_torch_nns(engine):
    """A gradient penalty (create_graph=True): the backward recomputes the layer on the reference
    loop to build the gradient's graph, so the parameters' gradients are torch.nn's."""
    ours = rnnkit.GRU(I, H, num_layers=2, engine=engine, dtype=torch.float64)
    ref = torch.nn.GRU(I, H, num_layers=2, dtype=torch.float64)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    grads = []
    for layer in (ours, ref):
        out = layer(x)[0]
        (g,) = torch.autograd.grad((out ** 2).sum(), x, create_graph=True)
        assert g.requires_grad
        grads.append(torch.autograd.grad((g ** 2).sum() + out.sum(), list(layer.parameters())))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


def test_double_backward_after_an_input_changed_in_place_raises():
    layer = rnnkit.GRU(I, H, engine="fused", dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    out = layer(x)[0]
    with torch.no_grad():
        layer.bias_hh_l0.add_(1.0)  # (not read by the first-order backward, but by its recomputation)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(out.sum(), x, create_graph=True)


def test_a_functorch_transform_gets_torch_nns_answer_or_a_clear_error():
    """auto runs the reference loop under a functorch transform (vmap too, which torch.nn's GRU has
    no batching rule for); an explicit fused engine says it cannot."""
    ours = rnnkit.GRU(I, H, dtype=torch.float64)
    ref = torch.nn.GRU(I, H, dtype=torch.float64)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    torch.testing.assert_close(torch.func.grad(lambda inp: ours(inp)[0].sum())(x),
                               torch.func.grad(lambda inp: ref(inp)[0].sum())(x), atol=1e-12, rtol=0)
    xs = torch.randn(2, T, B, I, dtype=torch.float64)
    torch.testing.assert_close(torch.func.vmap(lambda inp: ours(inp)[0])(xs),
                               torch.stack([ref(inp)[0] for inp in xs]), atol=1e-12, rtol=0)
    tangent = torch.randn_like(x)
    for got, want in zip(torch.func.jvp(lambda inp: ours(inp)[0], (x,), (tangent,)),
                         torch.func.jvp(lambda inp: ref(inp)[0], (x,), (tangent,))):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    ours.engine = "fused"
    with pytest.raises(ConfigError, match="engine='fused' cannot run under torch.func"):
        torch.func.grad(lambda inp: ours(inp)[0].sum())(x)


def test_engine_choice():
    x = torch.randn(B, T, I)
    assert pick_engine("auto", "rnn", x, None) is kernels.run_fused
    assert pick_engine("auto", "rnn", x, LENGTHS) is kernels.run_fused
    assert pick_engine("reference", "rnn", x, None) is run_reference
    half = x.to(torch.bfloat16)
    assert pick_engine("auto", "gru", half, None) is run_reference
    assert pick_engine("auto", "gru", x[:, :0], None) is run_reference
    with pytest.raises(ConfigError, match="fused"):
        pick_engine("fused", "gru", half, None)
    assert rnnkit.LSTM(I, H).engine == "auto"


def test_auto_falls_back_for_unsupported_dtype():
    layer = rnnkit.GRU(I, H, dtype=torch.bfloat16)
    ref = torch.nn.GRU(I, H, dtype=torch.bfloat16)
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(T, B, I, dtype=torch.bfloat16)
    out, h = layer(x)
    want, h_want = ref(x)
    assert torch.equal(out, want) and torch.equal(h, h_want)  # torch's own op
    layer = rnnkit.GRU(I, H, reset_after=False, dtype=torch.bfloat16)  # which torch has none for
    out, h = layer(x)
    layer.engine = "reference"
    ref, h_ref = layer(x)
    assert torch.equal(out, ref) and torch.equal(h, h_ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_activations_across_their_range(dtype):
    """The loop's own exp/tanh/sigmoid, computed in the data's dtype, against torch's: saturated
    arguments, the clamp at exp(-60), tiny ones, and NaN passing through."""
    from rnnkit.kernels import expmath

    a = torch.cat([torch.linspace(-100, 100, 2001, dtype=dtype), torch.tensor([1e-30, -1e-30, 0.0], dtype=dtype)])
    tol = 1e-7 if dtype == torch.float32 else 1e-15
    for ours, ref in ((expmath.tanh, torch.tanh), (expmath.sigmoid, torch.sigmoid)):
        got = torch.tensor([ours(v) for v in a.numpy()], dtype=dtype)
        torch.testing.assert_close(got, ref(a), atol=tol, rtol=0)
        name = str(a.numpy().dtype)  # no silent float64 arithmetic on float32 data:
        assert {str(s.return_type) for s in ours.nopython_signatures if str(s.args[0]) == name} == {name}
        assert math.isnan(ours(a.numpy().dtype.type("nan")))


def test_compiled_loops_are_keyed_on_what_they_are_compiled_from(tmp_path, monkeypatch):
    """A compiled body is found on disk by a hash of the kernels' source, the cell's, numba's and
    llvmlite's versions and the machine: a change to any of them builds anew instead of running the
    loops compiled before it."""
    from rnnkit.kernels import build, compiled

    lstm = cells.get("lstm")
    before = compiled.path(lstm, "float32")
    assert compiled.path(lstm, "float32") == before and compiled.path(lstm, "float64") != before
    assert compiled.path(cells.get("gru"), "float32") != before
    with monkeypatch.context() as m:  # another machine
        m.setenv("RNNKIT_CPU", "x86-64")
        compiled._kernels_hash.cache_clear()
        assert compiled.path(lstm, "float32") != before
    compiled._kernels_hash.cache_clear()
    with monkeypatch.context() as m:  # bounds checking
        m.setenv("RNNKIT_BOUNDSCHECK", "1")
        assert compiled.path(lstm, "float32") != before
    compiled._kernels_hash.cache_clear()
    changed = tmp_path / "kernels"
    changed.mkdir()
    here = os.path.dirname(build.__file__)
    for name in compiled._KERNEL_SOURCES:  # a copy of the kernels' source, one line changed
        text = open(os.path.join(here, name)).read()
        (changed / name).write_text(text + ("\n# one more line\n" if name == "loops.py" else ""))
    monkeypatch.setattr(compiled, "__file__", str(changed / "compiled.py"))
    assert compiled.path(lstm, "float32") != before
    compiled._kernels_hash.cache_clear()


def test_what_is_missing_is_built_in_one_go(tmp_path, monkeypatch, capsys):
    """The products and built-in cells missing go to one build process, a cell of this process is
    built here after it, under one line on stderr; what is on disk is not built again."""
    import dataclasses
    import pathlib
    import subprocess

    from rnnkit.kernels import build, compiled

    monkeypatch.setattr(compiled, "cache_dir", lambda: tmp_path)
    mine = dataclasses.replace(cells.get("lstm"), name="mine")  # (not registered: built here)
    runs, here = [], []

    def run(command, env, **kwargs):
        runs.append(command[command.index("-j") + 2:])
        assert env["RNNKIT_CACHE_DIR"] == str(tmp_path)
        for job in runs[-1]:
            name, dtype = job.split(":")
            pathlib.Path(compiled.path(None if name == "products" else cells.get(name), dtype)).touch()
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(compiled.subprocess, "run", run)
    monkeypatch.setattr(build, "build", lambda cell, dtype, where: here.append(cell.name) or pathlib.Path(where).touch())
    compiled._build([None, cells.get("gru"), mine], "float64")
    compiled._build([None, cells.get("gru"), mine], "float64")
    assert runs == [["products:float64", "gru:float64"]] and here == ["mine"]
    assert capsys.readouterr().err.splitlines() == [
        f"rnnkit: compiling the fused engine's product, gru and mine loops for float64 on this machine, once "
        f"(kept in {tmp_path})"]


COLD_CALL = """
import torch
import rnnkit
layer = rnnkit.LSTM(2, 8, batch_first=True, engine="fused")
x = torch.randn(3, 5, 2, requires_grad=True)
out, (h, c) = layer(x)
(out.sum() + c.sum()).backward()
assert torch.isfinite(x.grad).all() and all(torch.isfinite(p.grad).all() for p in layer.parameters())
"""


def test_a_first_call_compiles_what_it_needs_at_once(tmp_path):
    """A fresh process's first fused LSTM call on an empty cache compiles the product entry points
    and the LSTM's loops for float32 together: one line on stderr naming both (one build process);
    a second process finds them on disk and says nothing."""
    import subprocess
    import sys

    env = dict(os.environ, RNNKIT_CACHE_DIR=str(tmp_path / "cache"))
    lines = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", COLD_CALL], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        lines.append([line for line in done.stderr.splitlines() if line.startswith("rnnkit: compiling")])
    assert len(lines[0]) == 1 and "product and lstm loops for float32" in lines[0][0], lines[0]
    assert lines[1] == []
    assert sorted(name.split("-")[0] for name in os.listdir(tmp_path / "cache")) == ["lstm", "products"]


FIRST_CALL = """
import torch
import rnnkit
torch.set_num_threads(2)
torch.manual_seed(0)
x = torch.randn(32, 50, 1)
for cls in (rnnkit.RNN, rnnkit.GRU, rnnkit.LSTM):
    fused = cls(1, 32, batch_first=True, engine="fused")
    reference = cls(1, 32, batch_first=True, engine="reference")
    reference.load_state_dict(fused.state_dict())
    err = (fused(x)[0] - reference(x)[0]).abs().max().item()
    assert err < 1e-5, (cls.__name__, err)
"""


def test_the_first_call_of_a_process_is_right():
    """Each thread's W_hh^T for the small products is an array the loop allocates: reached through
    its address alone, numba freed it after the address was taken, and a forward loop that allocated
    after that (a version of the input projection in the loop) overwrote it; the first call of a
    process, on two row shards, then went wrong from the second step on (0.18 off at B32 T50 H32).
    In a fresh process, each cell's first call against the reference loop."""
    import subprocess
    import sys

    from rnnkit.kernels import blas, launch

    if launch.openmp() is None or blas.blas().name != "mkl":
        pytest.skip("row shards on a team need MKL and torch's OpenMP runtime")
    done = subprocess.run([sys.executable, "-c", FIRST_CALL], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("name, used", [(name, used) for name in ("rnn", "lstm", "gru", "gru-reset-before")
                                        for used in ("output", "h_n", "c_n") if used != "c_n" or name == "lstm"])
@pytest.mark.parametrize("path", ["one", "rows", "units"])
def test_unused_outputs_get_no_gradient_tensors(name, used, path, monkeypatch):
    """The fused layer asks autograd not to make zeros for an output the loss does not use (its
    gradient comes as None): a loss on the output alone, on h_n alone or on LSTM's c_n alone, on one
    thread, on row shards and on unit shards, against the reference loop."""
    cls, extra = CELLS[name]
    threads = torch.get_num_threads()
    try:
        with monkeypatch.context() as m:
            _force(m, path)
            torch.manual_seed(0)
            layer = cls(I, H, num_layers=2, dtype=torch.float64, **extra)
            x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
            results = []
            for engine in ("reference", "fused"):
                layer.engine = engine
                out, state = layer(x)
                target = {"output": out, "h_n": state[0] if name == "lstm" else state, "c_n": state[-1]}[used]
                gen = torch.Generator().manual_seed(1)
                loss = (target * torch.randn(target.shape, generator=gen, dtype=target.dtype)).sum()
                results.append(torch.autograd.grad(loss, [x, *layer.parameters()]))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, atol=1e-9, rtol=0)


@pytest.mark.parametrize("name", ["rnn", "lstm", "gru", "gru-reset-before"])
def test_the_operator_passes_opcheck_and_gives_the_functions_gradients(name):
    """torch.ops.rnnkit.fused_layer (what torch.compile and torch.export run): its schema, fake
    implementation and autograd registration as torch.library.opcheck checks them, and its outputs
    and gradients the autograd.Function's (the same loops)."""
    from rnnkit.kernels import op

    kind, reset_after = ("gru", False) if name == "gru-reset-before" else (name, True)
    code = kind_code(kind, reset_after=reset_after)
    cell = kernels.cell_of(code)
    G = {"rnn": 1, "lstm": 4, "gru": 3}[kind]
    torch.manual_seed(0)

    def leaf(*shape):
        return torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    x, h0, W_ih, W_hh, b_ih, b_hh = leaf(B, T, I), leaf(B, H), leaf(G * H, I), leaf(G * H, H), leaf(G * H), leaf(G * H)
    c0 = leaf(B, H) if kind == "lstm" else None
    inputs = [t for t in (x, h0, c0, W_ih, W_hh, b_ih, b_hh) if t is not None]
    for lengths in (None, LENGTHS):
        args = (x, h0, c0, W_ih, W_hh, b_ih, b_hh, lengths, code, True)
        assert set(torch.library.opcheck(op.fused_layer, args).values()) == {"SUCCESS"}
        results = []
        for outputs in (op.fused_layer(*args)[:3], FusedLayer.apply(cell, True, lengths, x, h0, c0, W_ih, W_hh, b_ih, b_hh)):
            outputs = [o for o in outputs if o is not None and o.numel()]
            loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view(o.shape)).sum() for o in outputs)
            results.append([o.detach() for o in outputs] + list(torch.autograd.grad(loss, inputs)))
        for got, want in zip(*results):
            torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
