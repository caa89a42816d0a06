"""Failures in the fused engine surface in the caller: an exception in a worker thread becomes a
Python exception within a second, a wait for another thread's step is bounded, and the kernel
boundary (run_fused, what the layers and CustomRNN call) refuses arguments the loops cannot read
with a ShapeError in the caller's terms, instead of reading past the end of an array."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

import rnnkit
from rnnkit.errors import ShapeError
from rnnkit.kernels import blas


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _force(monkeypatch, how: str) -> None:
    """Row shards ("rows") or hidden-unit shards ("units") on a team of torch's OpenMP threads, for
    a layer of 4 rows and 8 units."""
    if how == "rows":
        monkeypatch.setattr(blas, "TEAM_ROWS_MIN_WORK", 0)
        monkeypatch.setattr(blas, "SHARD_MIN_ROWS", 1)
    else:
        monkeypatch.setattr(blas, "UNITS_MIN_WORK", 0)
        monkeypatch.setattr(blas, "UNITS_ALIGN", 1)
    torch.set_num_threads(2)


def _step(layer, x):
    out, _ = layer(x)
    out.sum().backward()
    return out


@pytest.mark.parametrize("which", ["forward", "backward"])
@pytest.mark.parametrize("how", ["rows", "units"])
def test_an_exception_in_a_team_thread_is_raised_in_the_caller(how, which, monkeypatch, threads):
    """A team body cannot raise (numba would print its exception as unraisable and return, leaving
    the outputs unwritten and, on unit shards, the other threads waiting for its tasks): the body
    writes the failure into its block and opens every wait, and the caller raises WorkerError."""
    from rnnkit.kernels import team

    if blas._openmp() is None or blas.blas().name != "mkl":
        pytest.skip("teams need torch's OpenMP runtime and MKL")
    _force(monkeypatch, how)
    torch.manual_seed(0)
    layer = rnnkit.LSTM(3, 8, batch_first=True, engine="fused")
    x = torch.randn(4, 30, 3)
    _step(layer, x)  # (compiled and kept)
    plan = blas.plan(4, 8, 32)
    assert len(plan.shards) == 2 and plan.parties == (2 if how == "units" else 1)
    real_point = team.point
    calls = []

    def failing_point(slots, addresses):  # one call's block: its second shard raises at its start
        real_point(slots, addresses)
        calls.append(1)
        target = 1 if which == "forward" else 2
        slots.base[team.FAIL] = 1 if len(calls) == target else -1

    monkeypatch.setattr(team, "point", failing_point)
    start = time.perf_counter()
    with pytest.raises(blas.WorkerError, match="raised an exception"):
        _step(layer, x)
    assert time.perf_counter() - start < 1.0
    layer.zero_grad()
    # The next call (the same kept blocks, their status cleared) computes again, as the reference loop.
    got = _step(layer, x)
    layer.engine = "reference"
    torch.testing.assert_close(got, layer(x)[0], atol=1e-5, rtol=0)


def _lstm_forward_args(rows: bool = False):
    """A float64 LSTM layer's forward-loop arguments and a plan of two hidden-unit shards (or two
    batch-row shards) for them, as run_sharded gets them from the fused engine."""
    from rnnkit.kernels import loops

    B, T, I, H = 4, 6, 3, 16
    torch.manual_seed(0)
    layer = rnnkit.LSTM(I, H, dtype=torch.float64)
    W_ih, W_hh, b_ih, b_hh = [p.detach() for p in layer.layer_weights(0, 0)]
    x = torch.randn(B, T, I, dtype=torch.float64)  # I > 1: the caller projects it
    xp = torch.addmm(b_ih + b_hh, x.view(B * T, I), W_ih.t()).view(B, T, -1)
    hs, cs = torch.zeros(2, B, T + 1, H, dtype=torch.float64)
    zeros = torch.zeros(B, H, dtype=torch.float64)
    if rows:
        plan = blas.Plan(((0, B // 2, 0, H), (B // 2, B, 0, H)), 1)
    else:
        plan = blas.Plan(((0, B, 0, H // 2), (0, B, H // 2, H)), 2)
    args = (loops.LSTM, blas.blas().gemm[np.dtype(np.float64)], xp.numpy(), hs.numpy(), cs.numpy(),
            torch.empty(B, T, H, dtype=torch.float64).numpy(), W_hh.contiguous().numpy(), W_hh[0].numpy(),
            np.full(B, T, np.int64), x.numpy(), W_ih.numpy(), b_ih.numpy(), b_hh.numpy(), zeros.numpy(),
            zeros.numpy(), False)
    return args, plan


def test_unit_shards_survive_a_small_team(monkeypatch):
    """OpenMP may start fewer threads than asked: the threads there run the other shards' tasks
    too, with the same result."""
    from rnnkit.kernels import loops

    if blas._openmp() is None or blas.blas().name != "mkl":
        pytest.skip("teams need torch's OpenMP runtime and MKL")
    real = blas._openmp()
    one = real._replace(parallel=lambda fn, data, n, flags: real.parallel(fn, data, 1, 0))
    for rows in (False, True):
        args, plan = _lstm_forward_args(rows=rows)
        blas.run_sharded(loops.forward, args, plan)
        expected = args[3].copy()  # hs
        with monkeypatch.context() as m:
            m.setattr(blas, "_openmp", lambda: one)
            args, plan = _lstm_forward_args(rows=rows)
            blas.run_sharded(loops.forward, args, plan)  # a team of one
        np.testing.assert_array_equal(args[3], expected)


def _in_thread(fn, timeout: float):
    """fn() on another thread; (what it returned or raised, seconds taken)."""
    outcome = []

    def run():
        start = time.perf_counter()
        try:
            outcome.append(fn())
        except BaseException as e:  # noqa: BLE001 - handed to the test
            outcome.append(e)
        outcome.append(time.perf_counter() - start)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout)
    assert not worker.is_alive(), "the call did not return"
    return outcome


def test_a_party_failing_in_a_task_stops_the_others_at_once():
    """On the pool's threads, a party that fails after claiming a task (which nobody else will then
    run) aborts the call: the other party's next wait returns at once instead of waiting for that
    task, and the error comes back."""
    from rnnkit.kernels import loops

    def flaky(*a):
        if a[-4] == 0:  # j0: the first party (this thread's) claims its first task, then fails
            a[-2][2] = 1
            raise RuntimeError("party failed")
        loops.forward(*a)

    args, plan = _lstm_forward_args()
    sync = blas.team_sync(plan)
    shards = [(b0, b1, np.uint64(j0), np.uint64(j1), sync, 2) for b0, b1, j0, j1 in plan.shards]
    raised, seconds = _in_thread(lambda: blas._run_pool(flaky, args, shards), 30)
    assert isinstance(raised, RuntimeError) and "party failed" in str(raised)
    assert seconds < 1.0


def test_a_wait_for_a_stuck_party_gives_up_after_its_bound(monkeypatch):
    """A party that claims a task and never finishes it: the other's wait polls (pausing, then
    yielding its core) for the bound's seconds, then aborts the call, which raises WorkerError
    once the stuck party returns."""
    from rnnkit.kernels import loops

    monkeypatch.setattr(blas, "WAIT_LIMIT_S", 1)
    monkeypatch.setattr(blas, "_openmp", lambda: None)  # the pool's threads: a party is a Python call
    claimed, release = threading.Event(), threading.Event()
    gave_up = []

    def stuck(*a):
        if a[-4] != 0:  # the second party claims its first task and hangs in it
            a[-2][3] = 1
            claimed.set()
            release.wait(60)
            return
        claimed.wait(30)
        loops.forward(*a)
        gave_up.append(time.perf_counter())

    args, plan = _lstm_forward_args()
    start = time.perf_counter()
    outcome = []
    waiter = threading.Thread(target=lambda: outcome.extend(_in_thread(lambda: blas.run_sharded(stuck, args, plan), 60)),
                              daemon=True)
    waiter.start()
    while not gave_up and time.perf_counter() < start + 30:
        time.sleep(0.02)
    release.set()
    waiter.join(30)
    assert gave_up, "the waiting party never gave up"
    assert 0.9 < gave_up[0] - start < 10
    assert isinstance(outcome[0], blas.WorkerError) and "past its bound" in str(outcome[0])


def _lstm_call():
    torch.manual_seed(0)
    B, T, I, H = 3, 5, 2, 4
    x = torch.randn(B, T, I)
    state = (torch.zeros(B, H), torch.zeros(B, H))
    weights = (torch.randn(4 * H, I), torch.randn(4 * H, H), torch.randn(4 * H), torch.randn(4 * H))
    return x, state, weights


@pytest.mark.parametrize("change, message", [
    (lambda x, s, w: (x, s, (w[0], w[1], w[2][:-1], w[3])), r"b_ih of shape \(16,\); got \(15,\)"),
    (lambda x, s, w: (x, (s[0][:, :3], s[1]), w), r"h0 of shape \(3, 4\); got \(3, 3\)"),
    (lambda x, s, w: (x, s[:1], w), r"state as a tuple \(h0, c0\)"),
    (lambda x, s, w: (x, s, (w[0][:, :1], w[1], w[2], w[3])), r"W_ih of shape \(16, 2\); got \(16, 1\)"),
    (lambda x, s, w: (x, s, (w[0], w[1][:12], w[2], w[3])), r"W_hh of shape \(4\*hidden_size, hidden_size\)"),
    (lambda x, s, w: (x.double(), s, w), r"expects W_ih of the input's dtype torch.float64"),
    (lambda x, s, w: (x[:, :0], s, w), r"non-empty; got \(3, 0, 2\)"),
    (lambda x, s, w: (x[0], s, w), r"input of shape \(batch, seq_len, input_size\)"),
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
