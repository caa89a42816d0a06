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
    """Every array through the kept list, however small, and no call kept as a work (tested at the
    end, with their own setting); an empty list before and after."""
    monkeypatch.setattr(buffers, "MIN_BYTES", 0)
    monkeypatch.setattr(buffers, "WORK_MAX_BYTES", -1)
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


def test_a_request_takes_the_smallest_free_array_up_to_twice_its_size():
    big, small = buffers.empty((300,), torch.float32), buffers.empty((200,), torch.float32)
    addresses = big.data_ptr(), small.data_ptr()
    del big, small
    first = buffers.empty((150,), torch.float32)
    assert first.data_ptr() == addresses[1] and first.shape == (150,)  # 200 fits best
    second = buffers.empty((160,), torch.float32)
    assert second.data_ptr() == addresses[0]  # then 300
    del second
    third = buffers.empty((140,), torch.float64)  # bytes are bytes: 300 float32 hold 140 float64
    assert third.data_ptr() == addresses[0]
    del first, third
    assert buffers.empty((99,), torch.float32).data_ptr() not in addresses  # both over twice 99
    assert buffers.kept_bytes() == (300 + 200 + 99) * 4 + 3 * buffers._ALIGN


@pytest.mark.parametrize("holder", ["view", "numpy", "saved-for-backward", "itself", "storage"])
def test_an_array_still_held_is_not_handed_out(holder):
    a = buffers.empty((4, 5), torch.float64)
    address = a.data_ptr()
    if holder == "view":
        kept = a[1:]
    elif holder == "storage":
        kept = a[1:].untyped_storage()
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
    assert buffers.kept_bytes() == 1024 + buffers._ALIGN


def test_free_arrays_past_the_limit_go_least_recently_used_first(monkeypatch):
    block = 4096 + buffers._ALIGN  # what a 4 KiB array takes
    monkeypatch.setattr(buffers, "MAX_FREE_BYTES", 3 * block)
    held = [buffers.empty((1024,), torch.float32) for _ in range(4)]  # all in use
    assert buffers.kept_bytes() == 4 * block
    oldest = held[0].data_ptr()
    del held
    newest = buffers.empty((3072,), torch.float32)  # none fits: a new array, and one free one goes
    assert buffers.kept_bytes() == 3 * block + newest.nbytes + buffers._ALIGN
    again = buffers.empty((1024,), torch.float32)
    assert again.data_ptr() != oldest
    del newest
    assert buffers.release() == 2 * block + 3 * 4096 + buffers._ALIGN
    assert buffers.kept_bytes() == block  # `again`, in use


def test_varying_lengths_keep_no_more_free_memory_than_was_ever_in_use():
    torch.manual_seed(0)
    layer = rnnkit.LSTM(1, 16, batch_first=True, dtype=torch.float64)
    for T in torch.randint(5, 200, (40,)).tolist():
        out, state = layer(torch.randn(8, T, 1, dtype=torch.float64))
        out.sum().backward()
    del out, state
    kept = buffers.kept_bytes()  # every array is free now
    assert 0 < kept <= buffers._peak < 4 * 8 * 200 * 4 * 16 * 8  # under one call's of the longest
    assert buffers.release() == kept and buffers.kept_bytes() == 0


def _run(layer, xs, engine):
    """Outputs and gradients of two forward passes before one backward pass."""
    layer.engine = engine
    layer.zero_grad(set_to_none=True)
    outs = [layer(x)[0] for x in xs]
    sum((o * torch.arange(o.numel(), dtype=o.dtype).view_as(o)).sum() for o in outs).backward()
    return [o.detach() for o in outs] + [p.grad.clone() for p in layer.parameters()]


@pytest.fixture(params=["arrays", "works"])
def kept(request, monkeypatch):
    """Kept big arrays (every array, with the autouse fixture), or small calls kept whole as works."""
    if request.param == "works":
        monkeypatch.setattr(buffers, "WORK_MAX_BYTES", 4 << 20)
    return request.param


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_reused_buffers_give_the_reference_results(cell, kept):
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


def test_threads_do_not_share_a_buffer(kept):
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


def test_an_output_whose_storage_alone_is_kept_is_not_overwritten():
    layer = rnnkit.LSTM(1, 8, batch_first=True, engine="fused")
    with torch.no_grad():
        out = layer(torch.randn(4, 5, 1))[0]
        want = out.clone()
        storage, offset, shape, strides = out.untyped_storage(), out.storage_offset(), out.shape, out.stride()
        del out
        for _ in range(3):
            layer(torch.randn(4, 5, 1))
    assert torch.equal(torch.empty(0).set_(storage, offset, shape, strides), want)


def test_arrays_start_on_a_cache_line():
    assert all(buffers.empty((n,), torch.float32).data_ptr() % 64 == 0 for n in (1, 3, 1000, 4097))


def _take(key="k", shapes=((4, 5), (3,))):
    return buffers.work(key, shapes, torch.float64, lambda arrays: len(arrays))


@pytest.fixture
def works(monkeypatch):
    monkeypatch.setattr(buffers, "WORK_MAX_BYTES", 1 << 20)


@pytest.mark.parametrize("holder", ["view", "numpy", "saved-for-backward", "itself", "the list", "storage"])
def test_a_work_goes_to_the_next_call_only_when_nothing_holds_its_arrays(works, holder):
    w, arrays = _take()
    assert w.extra == 2 and [a.shape for a in arrays] == [(4, 5), (3,)]
    addresses = [a.data_ptr() for a in arrays]
    a = arrays[1]
    if holder == "view":
        held = a[1:]
    elif holder == "storage":  # all a caller may keep of an output: its memory, not its tensor
        held = a[1:].untyped_storage()
    elif holder == "numpy":
        held = a.numpy()
    elif holder == "saved-for-backward":
        held = (a * torch.ones(3, dtype=torch.float64, requires_grad=True)).sum()
    elif holder == "itself":
        held = a
    else:
        held = arrays
    del a, arrays
    other, arrays = _take()
    assert other is not w and arrays[1].data_ptr() != addresses[1]
    del other, arrays, held
    again, arrays = _take()
    assert again is w and [a.data_ptr() for a in arrays] == addresses
    assert _take("another key")[0] is not w


def test_a_big_call_is_not_kept(works):
    w, arrays = _take(shapes=((1024, 1024),))  # 8 MB
    del arrays
    assert _take(shapes=((1024, 1024),))[0] is not w and not buffers._works


def test_a_big_call_gets_the_extra_an_earlier_call_of_its_key_gave_back(works, monkeypatch):
    monkeypatch.setattr(buffers, "SPARE_KEYS", 2)
    made = []

    def take(key):
        return buffers.work(key, ((1024, 1024),), torch.float64, lambda arrays: made.append(key) or object())

    first, _ = take("a")
    assert take("a")[0].extra is not first.extra  # not given back yet: a second one made
    buffers.done(first)
    again, _ = take("a")
    assert again.extra is first.extra and made == ["a", "a"]
    for key in "abc":  # three keys' given back, two kept: a's, the least recently used, go
        buffers.done(take(key)[0])
    assert list(buffers._spares) == ["b", "c"]
    buffers.release()
    assert not buffers._spares


def test_free_works_past_the_limit_go_least_recently_used_first(works, monkeypatch):
    monkeypatch.setattr(buffers, "FREE_WORKS", 2)
    made = [_take(key)[0] for key in "abcd"]  # each free once made
    assert list(buffers._works) == ["b", "c", "d"] and buffers._works["d"] == [made[3]]
    assert buffers.release() == 3 * (20 + 3) * 8 and not buffers._works


def test_without_torch_use_counts_no_work_is_kept(works, monkeypatch):
    monkeypatch.setattr(buffers, "_COUNTS", False)
    w, arrays = _take()
    del arrays
    assert _take()[0] is not w and not buffers._works
