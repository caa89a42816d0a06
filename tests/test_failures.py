"""Failures in the fused engine surface in the caller: an exception in a worker thread becomes a
Python exception within a second, a wait for another thread's step is bounded, and the kernel
boundary (run_fused, what the layers and CustomRNN call) refuses arguments the loops cannot read
with a ShapeError in the caller's terms, instead of reading past the end of an array."""

from __future__ import annotations

import functools
import time

import pytest
import torch

import rnnkit
from rnnkit.errors import ShapeError
from rnnkit.kernels import blas, launch, layout, plan


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def checked(monkeypatch):
    """The checked build of the loops (rnnkit.kernels.build: bounds checked, exceptions caught and
    raised in the caller, the tests' failure injection), for this test's calls alone."""
    from rnnkit.kernels import buffers

    monkeypatch.setenv("RNNKIT_BOUNDSCHECK", "1")
    buffers.release()  # (no call kept with the unchecked build's bodies)
    yield
    buffers.release()


def _force(monkeypatch, how: str) -> None:
    """Row shards ("rows") or hidden-unit shards ("units") on two threads, for a layer of 4 rows
    and 8 units: a team of torch's OpenMP threads, or (``-pool``) the pool's Python threads."""
    if how.startswith("rows"):
        monkeypatch.setattr(plan, "TEAM_ROWS_MIN_WORK", 0)
        monkeypatch.setattr(plan, "SHARD_MIN_ROWS", 1)
    else:
        monkeypatch.setattr(plan, "UNITS_MIN_WORK", 0)
        monkeypatch.setattr(plan, "UNITS_ALIGN", 1)
    if how.endswith("pool"):
        monkeypatch.setattr(launch, "openmp", lambda: None)
    torch.set_num_threads(2)


def _step(layer, x):
    out, _ = layer(x)
    out.sum().backward()
    return out


def _inject(monkeypatch, which: str, shard: int, phase: int, also=None):
    """Make one call's block (the next forward's or backward's) raise in ``shard``: at its start
    (phase -1) or in its task of ``phase`` (after claiming it, so that no other thread will run it);
    ``also(block)`` may change the block further. Every other call's block raises nowhere."""
    real = layout.Block.point
    calls = []

    def point(block, addresses):
        real(block, addresses)
        calls.append(1)
        target = len(calls) == (1 if which == "forward" else 2)
        block["fail_shard"], block["fail_phase"] = (shard, phase) if target else (-1, -1)
        if target and also is not None:
            also(block)

    monkeypatch.setattr(layout.Block, "point", point)


@pytest.mark.parametrize("where", ["start", "task"])
@pytest.mark.parametrize("which", ["forward", "backward"])
@pytest.mark.parametrize("how", ["rows", "units", "units-pool"])
def test_an_exception_in_a_thread_is_raised_in_the_caller(how, which, where, monkeypatch, threads, checked):
    """A compiled body cannot raise (numba would print its exception as unraisable and return,
    leaving the outputs unwritten and, on unit shards, the other threads waiting for its tasks): in
    a checked build it catches it, writes the failure into its block and aborts the call, so that
    every wait of the call returns, and the caller raises WorkerError. A shard failing at its start,
    or in a task it has claimed."""
    if how != "units-pool" and (launch.openmp() is None or blas.blas().name != "mkl"):
        pytest.skip("teams need torch's OpenMP runtime and MKL")
    if how == "rows" and where == "task":
        pytest.skip("row shards have no tasks")
    _force(monkeypatch, how)
    torch.manual_seed(0)
    layer = rnnkit.LSTM(3, 8, batch_first=True, engine="fused")
    x = torch.randn(4, 30, 3)
    _step(layer, x)  # (compiled and kept)
    split = plan.plan(4, 8, 32)
    assert len(split.shards) == 2 and split.parties == (1 if how == "rows" else 2)
    _inject(monkeypatch, which, 1, -1 if where == "start" else 3)
    start = time.perf_counter()
    with pytest.raises(launch.WorkerError, match="raised an exception"):
        _step(layer, x)
    assert time.perf_counter() - start < 1.0
    layer.zero_grad()
    # The next call (the same kept blocks, their state cleared) computes again, as the reference loop.
    got = _step(layer, x)
    layer.engine = "reference"
    torch.testing.assert_close(got, layer(x)[0], atol=1e-5, rtol=0)


def test_a_wait_for_a_stuck_party_gives_up_after_its_bound(monkeypatch, threads, checked):
    """A party that claimed a task and never finishes it (here: every phase of shard 1 marked
    claimed, and one thread): the other's wait polls (pausing, then yielding its core) for the
    bound's seconds of its own polling, then aborts the call, which raises WorkerError."""
    if launch.openmp() is None or blas.blas().name != "mkl":
        pytest.skip("teams need torch's OpenMP runtime and MKL")
    _force(monkeypatch, "units")
    real = launch.openmp()
    monkeypatch.setattr(launch, "openmp", lambda: real._replace(
        parallel=lambda fn, data, n, flags: real.parallel(fn, data, 1, 0)))  # a team of one
    layer = rnnkit.LSTM(3, 8, batch_first=True, engine="fused")
    x = torch.randn(4, 30, 3)
    with torch.no_grad():
        layer(x)

    def stuck(block):
        block.state[len(layout.STATE) + 1] = 1 << 40  # shard 1's phases: all claimed by nobody
        block["wait_limit"] = 1

    _inject(monkeypatch, "forward", -1, -1, also=stuck)
    start = time.perf_counter()
    with torch.no_grad(), pytest.raises(launch.WorkerError, match="waited past its bound"):
        layer(x)
    assert 0.9 < time.perf_counter() - start < 10


def test_unit_shards_survive_a_small_team(monkeypatch, threads):
    """OpenMP may start fewer threads than asked: the threads there take every shard and each
    other shard's tasks, with the same bits."""
    if launch.openmp() is None or blas.blas().name != "mkl":
        pytest.skip("teams need torch's OpenMP runtime and MKL")
    results = []
    for team in (None, 1):
        with monkeypatch.context() as m:
            _force(m, "units")
            if team:
                real = launch.openmp()
                m.setattr(launch, "openmp", functools.cache(lambda: real._replace(
                    parallel=lambda fn, data, n, flags: real.parallel(fn, data, 1, 0))))
            torch.manual_seed(0)
            layer = rnnkit.GRU(3, 8, num_layers=2, batch_first=True, engine="fused")
            x = torch.randn(4, 30, 3, requires_grad=True)
            out = _step(layer, x)
            results.append([out, x.grad, *[p.grad for p in layer.parameters()]])
    for a, b in zip(*results):
        assert torch.equal(a, b)


def _lstm_call():
    torch.manual_seed(0)
    B, T, I, H = 3, 5, 2, 4
    x = torch.randn(B, T, I)
    state = (torch.zeros(B, H), torch.zeros(B, H))
    weights = (torch.randn(4 * H, I), torch.randn(4 * H, H), torch.randn(4 * H), torch.randn(4 * H))
    return x, state, weights


@pytest.mark.parametrize("change, message", [
    (lambda x, s, w: (x, s, (w[0], w[1], w[2][:-1], w[3])), r"b_ih of shape \(16,\); got \(15,\)"),
    (lambda x, s, w: (x, (s[0], s[1][:, :3]), w), r"c0 of shape \(3, 4\); got \(3, 3\)"),
    (lambda x, s, w: (x, s[:1], w), r"state as a tuple \(h0, c0\)"),
    (lambda x, s, w: (x, s, (w[0][:, :1], w[1], w[2], w[3])), r"W_ih of shape \(16, 2\); got \(16, 1\)"),
    (lambda x, s, w: (x, s, (w[0], w[1][:12], w[2], w[3])), r"W_hh of shape \(16, 4\); got \(12, 4\)"),
    (lambda x, s, w: (x.double(), s, w), r"expects W_ih of the input's dtype torch.float64"),
    (lambda x, s, w: (x[:, :0], s, w), r"non-empty; got \(3, 0, 2\)"),
    (lambda x, s, w: (x[0], s, w), r"input of shape \(batch, seq_len, input_size\)"),
    (lambda x, s, w: (x, s, w[:3]), r"expects weights \(W_ih, W_hh, b_ih, b_hh\)"),
])
def test_the_kernel_boundary_refuses_what_the_loops_cannot_read(change, message):
    x, state, weights = change(*_lstm_call())
    with pytest.raises(ShapeError, match=message):
        rnnkit.kernels.run_fused("lstm", x, state, weights)


def test_the_kernel_boundary_checks_lengths_and_reads_strided_tensors():
    x, state, weights = _lstm_call()
    with pytest.raises(ShapeError, match=r"lengths None or of shape \(3,\), int64"):
        rnnkit.kernels.run_fused("lstm", x, state, weights, lengths=torch.tensor([5, 4]))
    with pytest.raises(ShapeError, match=r"int64"):
        rnnkit.kernels.run_fused("lstm", x, state, weights, lengths=torch.tensor([5.0, 4.0, 1.0]))
    # Strided views (a bias with every other element, x and W_hh transposed twice) are read as
    # the tensors they are, as the reference loop reads them.
    W_ih, W_hh, b_ih, b_hh = weights
    wide = torch.randn(32)
    strided = (W_ih, W_hh.t().contiguous().t(), wide[::2], b_hh)
    from rnnkit.layers import run_reference

    want = run_reference("lstm", x, state, strided)
    got = rnnkit.kernels.run_fused("lstm", x.transpose(0, 1).contiguous().transpose(0, 1), state, strided)
    for a, b in zip([want[0], *want[1]], [got[0], *got[1]]):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)


def test_custom_rnn_with_a_wrong_weight_gets_a_shape_error():
    """CustomRNN's time loop is the engine's run_fused over its own parameters: a parameter
    replaced by one of the wrong shape is refused at the boundary."""
    model = rnnkit.CustomRNN(1, 8, 1, engine="fused")
    with torch.no_grad():
        model.bias_h = torch.nn.Parameter(torch.zeros(7))
    with pytest.raises(ShapeError, match=r"b_ih of shape \(8,\); got \(7,\)"):
        model(torch.randn(2, 5, 1))
