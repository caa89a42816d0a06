"""The fused engine's kept arrays (rnnkit.kernels.buffers): an array goes to a new request only when
nothing else holds it, and the layers that use them give the reference's results even when their
buffers are reused from call to call and shared by threads."""

from __future__ import annotations

import threading

import pytest
import torch

import rnnkit
from rnnkit.kernels import buffers


@pytest.fixture(autouse=True)
def every_array_kept(monkeypatch):
    """Every array through the kept list, however small; an empty list before and after."""
    monkeypatch.setattr(buffers, "MIN_BYTES", 0)
    buffers.release()
    yield
    buffers.release()


def test_a_free_array_serves_the_next_request_of_its_size():
    a = buffers.empty((4, 5), torch.float32)
    address = a.data_ptr()
    del a
    b = buffers.empty((5, 4), torch.float32)
    assert b.data_ptr() == address and b.shape == (5, 4) and b.is_contiguous()
    assert buffers.empty((4, 5), torch.float64).data_ptr() != address  # another dtype: another array


@pytest.mark.parametrize("holder", ["view", "numpy", "saved-for-backward", "itself"])
def test_an_array_still_held_is_not_handed_out(holder):
    a = buffers.empty((4, 5), torch.float64)
    address = a.data_ptr()
    if holder == "view":
        kept = a[1:]
    elif holder == "numpy":
        kept = a.numpy()
    elif holder == "saved-for-backward":
        w = torch.ones(5, dtype=torch.float64, requires_grad=True)
        kept = (a * w).sum()  # the product saves a for w's gradient
    else:
        kept = a
    del a
    assert buffers.empty((4, 5), torch.float64).data_ptr() != address
    del kept
    assert buffers.empty((4, 5), torch.float64).data_ptr() == address


def test_small_arrays_come_from_torch(monkeypatch):
    monkeypatch.setattr(buffers, "MIN_BYTES", 1024)
    buffers.empty((16, 16), torch.float32)  # 1 KiB: kept
    buffers.empty((15, 16), torch.float32)  # under it: torch.empty
    assert buffers.kept_bytes() == 1024


def test_free_arrays_past_the_limit_go_least_recently_used_first(monkeypatch):
    monkeypatch.setattr(buffers, "MAX_FREE_BYTES", 3 * 4096)
    held = [buffers.empty((1024,), torch.float32) for _ in range(4)]  # 4 KiB each, all in use
    assert buffers.kept_bytes() == 4 * 4096
    oldest = held[0].data_ptr()
    del held
    newest = buffers.empty((2048,), torch.float32)  # 8 KiB: only 4 KiB of free arrays may stay
    assert buffers.kept_bytes() == 4096 + newest.nbytes
    again = buffers.empty((1024,), torch.float32)  # the most recent of the four
    assert again.data_ptr() != oldest
    del newest
    assert buffers.release() == 2048 * 4 and buffers.kept_bytes() == again.nbytes  # still in use


def _run(layer, xs, engine):
    """Outputs and gradients of two forward passes before one backward pass."""
    layer.engine = engine
    layer.zero_grad(set_to_none=True)
    outs = [layer(x)[0] for x in xs]
    sum((o * torch.arange(o.numel(), dtype=o.dtype).view_as(o)).sum() for o in outs).backward()
    return [o.detach() for o in outs] + [p.grad.clone() for p in layer.parameters()]


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_reused_buffers_give_the_reference_results(cell):
    """Two calls alive at once (their activations saved for one backward pass), then the same again
    on buffers that the first round freed: nothing one call stored is overwritten by the other."""
    torch.manual_seed(0)
    layer = getattr(rnnkit, cell.upper())(3, 6, num_layers=2, bidirectional=True, batch_first=True,
                                          dtype=torch.float64)
    xs = [torch.randn(4, 7, 3, dtype=torch.float64) for _ in range(2)]
    want = _run(layer, xs, "reference")
    for _ in range(2):
        for got, ref in zip(_run(layer, xs, "fused"), want):
            torch.testing.assert_close(got, ref, atol=1e-9, rtol=0)
    assert buffers.kept_bytes() > 0


def test_threads_do_not_share_a_buffer():
    """Fused layers trained on four threads at once (the loops release the GIL) give each thread
    the results of running alone."""
    torch.manual_seed(0)
    layers = [rnnkit.LSTM(2, 8, batch_first=True, dtype=torch.float64) for _ in range(4)]
    xs = [torch.randn(5, 30, 2, dtype=torch.float64) for _ in layers]
    want = [_run(layer, [x], "fused") for layer, x in zip(layers, xs)]
    got = [None] * len(layers)

    def work(k):
        for _ in range(20):
            got[k] = _run(layers[k], [xs[k]], "fused")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(layers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, w in zip(got, want):
        for a, b in zip(g, w):
            assert torch.equal(a, b)


def test_arrays_start_on_a_cache_line():
    assert all(buffers.empty((n,), torch.float32).data_ptr() % 64 == 0 for n in (1, 3, 1000, 4097))
