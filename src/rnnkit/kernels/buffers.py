"""The fused engine's big arrays, kept for the next call instead of handed back to the system.

A layer's input projection, states, activations and pre-activation gradients are megabytes each at
larger sizes (6.5 MB for ``xp`` at B32 T50 H256 LSTM), allocated every call and freed when the
backward pass is done. glibc may map such blocks fresh from the system and unmap them on free
(whether it does depends on the process's allocation history), and each call then writes them into
new pages: thousands of page faults per train step at the bench's bigger sizes in a fresh process
(benchmarks/README.md has the counts).

:func:`empty` hands out tensors over byte arrays that this module keeps. Each tensor is made by
``torch.from_numpy`` from a numpy view of one of them, and a numpy view references the array that
owns its memory: for as long as the tensor, any view of it or anything saved for a backward pass
lives, so does that reference. An array that nothing else references is free; the next request that
it holds without wasting more than the request needs (the smallest such array) gets it,
uninitialized like ``torch.empty``, so sequences of varying length reuse the longest ones. Free
arrays beyond the most that was ever in use at once (at most :data:`MAX_FREE_BYTES`) go back to
the system, least recently used first; :func:`release` returns all of them. Arrays under :data:`MIN_BYTES` come from ``torch.empty``: glibc
keeps those itself.

Small calls keep more: :func:`work` hands out a whole call's arrays at once, kept as plain tensors
with whatever the caller built over them (the fused engine: the team block that points at them). A
small layer's step is mostly Python, and this takes the arrays' allocation, their conversions to
numpy and the block's assembly out of it (a sizeable share of a small layer's train step). A kept
call's arrays are free when nothing but the work
references them, their memory or a view of them (torch's own use counts say so; without them a work
is never reused).
"""

from __future__ import annotations

import functools
import math
import sys
import threading
from collections import OrderedDict
from typing import Callable

import numpy as np
import torch
from torch import Tensor

MIN_BYTES = 1 << 20  # smaller arrays come from torch.empty (module attributes: tests change them)
MAX_FREE_BYTES = 256 << 20  # at most this much free memory is kept (see _trim)
WORK_MAX_BYTES = 4 << 20  # calls whose arrays take more are not kept as works
FREE_WORKS = 16  # at most this many free works are kept
SPARE_KEYS = 64  # the most keys whose big calls' extras are kept for the next call (see work)
_WORKS_PER_KEY = 4  # with this many of one key in use, another is not kept
_ALIGN = 64  # bytes: a cache line, as torch.empty's (numpy's own allocations are 16-byte aligned)

_lock = threading.Lock()
_kept: list[np.ndarray] = []  # uint8 arrays that own their memory, least recently handed out first
_peak = 0  # the most bytes of them in use at once (as seen at each new allocation)


def _free(i: int) -> bool:
    """Whether nothing but the list holds _kept[i]: every array handed out is a view of it, and a
    numpy view references the array that owns its memory (getrefcount's argument is the other one)."""
    return sys.getrefcount(_kept[i]) == 2


def _capacity(i: int) -> int:
    return _kept[i].nbytes - _ALIGN


@functools.cache
def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    return torch.empty(0, dtype=dtype).numpy().dtype


def empty(shape: tuple, dtype: torch.dtype) -> Tensor:
    """An uninitialized contiguous tensor, as ``torch.empty(shape, dtype=dtype)`` on the CPU."""
    np_dtype = _numpy_dtype(dtype)
    nbytes = math.prod(shape) * np_dtype.itemsize
    if nbytes < MIN_BYTES:
        return torch.empty(shape, dtype=dtype)
    with _lock:
        best = None  # the smallest free array that holds it without wasting more than it needs
        for i in range(len(_kept)):
            room = _capacity(i)
            if nbytes <= room <= 2 * nbytes and (best is None or room < _capacity(best)) and _free(i):
                best = i
        if best is None:
            owner = np.empty(nbytes + _ALIGN, np.uint8)
            _kept.append(owner)
            _trim()  # with a new array in use, the free ones may be more than will be needed
        else:
            owner = _kept.pop(best)
            _kept.append(owner)  # the most recently handed out last
        start = -owner.ctypes.data % _ALIGN
        return torch.from_numpy(owner[start:start + nbytes].view(np_dtype)).view(shape)


def _trim(limit: int | None = None) -> int:
    """Drop free arrays, least recently used first, until those left take at most ``limit`` bytes:
    by default as many as were ever in use at once (what the next call of a steady training loop
    needs again), and no more than MAX_FREE_BYTES. The bytes dropped. (Caller holds the lock.)"""
    global _peak
    free = [i for i in range(len(_kept)) if _free(i)]
    total = sum(_kept[i].nbytes for i in free)
    _peak = max(_peak, sum(a.nbytes for a in _kept) - total)
    if limit is None:
        limit = min(_peak, MAX_FREE_BYTES)
    dropped = 0
    for i in free:
        if total - dropped <= limit:
            break
        dropped += _kept[i].nbytes
        _kept[i] = None  # type: ignore[call-overload]
    _kept[:] = [a for a in _kept if a is not None]
    return dropped


def release() -> int:
    """Give every free array and work back to the system (and forget the most ever in use); returns
    the bytes given back."""
    global _peak
    with _lock:
        dropped = _trim(0) + _trim_works(0)
        _peak = sum(a.nbytes for a in _kept)
        _spares.clear()
        return dropped


def kept_bytes() -> int:
    """The bytes held, free or in use (works included)."""
    with _lock:
        return sum(a.nbytes for a in _kept) + sum(_work_bytes(w) for ws in _works.values() for w in ws)


def _work_bytes(w: "Work") -> int:
    return sum(t.nbytes for t in w.arrays)


class Work:
    """One call's arrays (``arrays``, a tuple of tensors) and what the caller keeps with them
    (``extra``)."""

    __slots__ = ("arrays", "extra", "key", "watched")

    def __init__(self, arrays: tuple, extra, key=None) -> None:
        self.arrays, self.extra, self.key = arrays, extra, key  # key: a call not kept (see done)
        # What _free_work checks, each array with its storage (torch's one Python object for it:
        # whoever asks a view of the array for its storage gets that object) and the storage's
        # address (constant: nothing sets a work's array to another storage): an empty array has
        # no memory to share (the loops' unused ones).
        self.watched = tuple((t, s, s._cdata) for t in arrays if t.numel() for s in (t.untyped_storage(),))


_works: OrderedDict = OrderedDict()  # key -> [Work], least recently used key first
_spares: OrderedDict = OrderedDict()  # key -> [extra] of calls not kept, least recently used key first
_storage_uses = getattr(torch._C, "_storage_Use_Count", None)
_COUNTS = _storage_uses is not None and hasattr(Tensor, "_use_count")  # else no work is kept


def _python_refs(t: Tensor) -> int:
    return sys.getrefcount(t)


def _free_work(w: Work) -> bool:
    """Whether nothing but the work holds its arrays, a view of them or their memory: Python
    references (beyond the work's tuples and this loop's) to a tensor and to its storage object (a
    caller that kept ``out.untyped_storage()``), the C++ references to a tensor (autograd's saved
    tensors) and to its storage (views, numpy arrays), read at the address the work keeps."""
    for t, storage, address in w.watched:
        if (_python_refs(t) != _IDLE_REFS or _python_refs(storage) != _IDLE_STORAGE_REFS
                or t._use_count() != 1 or _storage_uses(address) != _IDLE_USES):
            return False
    return True


def _idle_counts() -> tuple[int, int, int]:
    """What _free_work's loop reads for an array that only a work holds (in its two tuples): its
    Python references and its storage object's, and its storage's uses (the array's, and the Python
    storage object's)."""
    w = Work((torch.empty(1),), None)
    (t, storage, address), = w.watched
    return _python_refs(t), _python_refs(storage), (_storage_uses(address) if _COUNTS else 0)


_IDLE_REFS, _IDLE_STORAGE_REFS, _IDLE_USES = _idle_counts()


def work(key, shapes: tuple, dtype: torch.dtype, make: Callable) -> tuple[Work, list]:
    """A call's arrays of these shapes (uninitialized), as the list ``arrays`` returned with the Work
    (holding it marks them in use): a free kept work of the same key, else new arrays, with
    ``make(arrays)`` as the work's ``extra``. A new work is kept if its arrays take at most
    WORK_MAX_BYTES (then from torch.empty, else from :func:`empty`); as one is, free works beyond
    FREE_WORKS go, least recently used first. A call that is not kept gets, instead of
    ``make(arrays)``, the extra of an earlier call of its key that the caller gave back with
    :func:`done` where there is one: the caller then moves it to these arrays (the fused engine:
    its launch: a block and scratch memory, slow to make and pointed at every call's arrays anyway)."""
    with _lock:
        kept = _works.get(key)
        if kept is not None:
            _works.move_to_end(key)
            for w in kept:
                if _free_work(w):
                    return w, list(w.arrays)
        nbytes = sum(math.prod(s) for s in shapes) * _numpy_dtype(dtype).itemsize
        keep = _COUNTS and nbytes <= WORK_MAX_BYTES and len(kept or ()) < _WORKS_PER_KEY
        if keep:
            arrays = tuple(torch.empty(s, dtype=dtype) for s in shapes)
            w = Work(arrays, make(arrays))
            _trim_works(FREE_WORKS)  # before the new work joins (its arrays look free until returned)
            _works.setdefault(key, []).append(w)
            return w, list(arrays)
    arrays = tuple(empty(s, dtype) for s in shapes)
    with _lock:
        spare = _spares.get(key)
        extra = spare.pop() if spare else None
    return Work(arrays, make(arrays) if extra is None else extra, key), list(arrays)


def done(w: Work) -> None:
    """The caller is done with a work's extra: for a call not kept, it goes to the next call of the
    key (see :func:`work`); at most SPARE_KEYS keys' are kept, least recently used first."""
    if w.key is None or w.extra is None:
        return
    with _lock:
        _spares.setdefault(w.key, []).append(w.extra)
        _spares.move_to_end(w.key)
        while len(_spares) > SPARE_KEYS:
            _spares.popitem(last=False)


def _trim_works(limit: int) -> int:
    """Drop free works, least recently used key first, until at most ``limit`` are left; the bytes
    dropped. (Caller holds the lock.)"""
    free = [(key, w) for key, ws in _works.items() for w in ws if _free_work(w)]
    drop = free[:max(0, len(free) - limit)]
    for key, w in drop:
        _works[key].remove(w)
        if not _works[key]:
            del _works[key]
    return sum(_work_bytes(w) for _, w in drop)
