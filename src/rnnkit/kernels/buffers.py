"""The fused engine's big arrays, kept for the next call instead of handed back to the system.

A layer's input projection, states, activations and pre-activation gradients are megabytes each at
larger sizes (6.5 MB for ``xp`` at B32 T50 H256 LSTM), allocated every call and freed when the
backward pass is done. glibc may map such blocks fresh from the system and unmap them on free
(whether it does depends on the process's allocation history), and each call then writes them into
new pages: up to 5,400 page faults per train step at B32 T50 H256 and 19,000 at B64 T200 H128 in a
fresh process, 1-3 µs each on the dev machine (benchmarks/README.md, fifth pass).

:func:`empty` hands out tensors over numpy arrays that this module keeps. A tensor made by
``torch.from_numpy`` holds a reference to its array for as long as the tensor, any view of it or
anything saved for a backward pass lives; an array that nothing else references is free, and the
next request of the same size gets it (uninitialized, like ``torch.empty``). Free arrays beyond
:data:`MAX_FREE_BYTES` go back to the system, least recently used first; :func:`release` returns
all of them. Arrays under :data:`MIN_BYTES` come from ``torch.empty``: glibc keeps those itself.
"""

from __future__ import annotations

import functools
import math
import sys
import threading

import numpy as np
import torch
from torch import Tensor

MIN_BYTES = 1 << 20  # smaller arrays come from torch.empty (module attributes: tests change them)
MAX_FREE_BYTES = 256 << 20  # free arrays kept beyond this are dropped, least recently used first

_lock = threading.Lock()
_kept: list[np.ndarray] = []  # least recently handed out first


def _free(i: int) -> bool:
    """Whether nothing but the list holds _kept[i] (getrefcount's own argument is the other one)."""
    return sys.getrefcount(_kept[i]) == 2


@functools.cache
def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    return torch.empty(0, dtype=dtype).numpy().dtype


def empty(shape: tuple, dtype: torch.dtype) -> Tensor:
    """An uninitialized contiguous tensor, as ``torch.empty(shape, dtype=dtype)`` on the CPU."""
    count = math.prod(shape)
    np_dtype = _numpy_dtype(dtype)
    if count * np_dtype.itemsize < MIN_BYTES:
        return torch.empty(shape, dtype=dtype)
    with _lock:
        for i in range(len(_kept)):
            if _kept[i].size == count and _kept[i].dtype == np_dtype and _free(i):
                array = _kept.pop(i)
                break
        else:
            array = _aligned(count, np_dtype)
            _trim(MAX_FREE_BYTES - array.nbytes)
        _kept.append(array)
        return torch.from_numpy(array).view(shape)


def _aligned(count: int, dtype: np.dtype) -> np.ndarray:
    """np.empty(count, dtype) starting on a 64-byte boundary, as torch.empty's (numpy's own
    allocations are 16-byte aligned, and the loops' vector loads and MKL's prefer whole lines)."""
    raw = np.empty(count * dtype.itemsize + 64, np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start:start + count * dtype.itemsize].view(dtype)


def _trim(limit: int) -> int:
    """Drop free arrays, least recently used first, until those left take at most ``limit`` bytes;
    the bytes dropped. (Caller holds the lock.)"""
    free = [i for i in range(len(_kept)) if _free(i)]
    total = sum(_kept[i].nbytes for i in free)
    dropped = 0
    for i in free:
        if total - dropped <= limit:
            break
        dropped += _kept[i].nbytes
        _kept[i] = None  # type: ignore[call-overload]
    _kept[:] = [a for a in _kept if a is not None]
    return dropped


def release() -> int:
    """Give every free array back to the system; returns the bytes given back."""
    with _lock:
        return _trim(0)


def kept_bytes() -> int:
    """The bytes held, free or in use."""
    with _lock:
        return sum(a.nbytes for a in _kept)
