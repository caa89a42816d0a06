"""The BLAS the compiled loops call for a W_hh too big to pack (over layout.PACKED_MAX_BYTES), found
by address so that no pointer of this process enters the compiled code:

* **MKL** from torch's own library (``libtorch_cpu`` exports MKL's Fortran ``sgemm_``/``dgemm_`` on
  x86-64 Linux), the BLAS torch.nn itself runs on, faster than OpenBLAS single-threaded at these
  shapes.
* **scipy's OpenBLAS** (``scipy.linalg.cython_blas``) everywhere else.

``RNNKIT_BLAS=scipy`` forces the second (the tests patch it in; ``make test-portable`` runs the
kernel tests with it set, as a torch without MKL runs them). The choice is checked once on a small
product against numpy before it is used. Every product runs on one BLAS thread (the threads are the
loops' own), and which BLAS there is also decides how the threads are shared out
(rnnkit.kernels.plan).
"""

from __future__ import annotations

import ctypes
import functools
import os
from typing import Callable, NamedTuple

import numpy as np
import torch


class Blas(NamedTuple):
    name: str  # "mkl" or "openblas"
    gemm: dict  # numpy dtype -> address of the Fortran ?gemm_
    set_threads: Callable[[int], int] | None  # this thread's BLAS threads; returns the old count
    set_threads_address: int  # of MKL's MKL_Set_Num_Threads_Local (0 for OpenBLAS)


def _address(fn) -> int:
    return ctypes.cast(fn, ctypes.c_void_p).value


def _mkl() -> Blas | None:
    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    if not os.path.exists(path):
        return None
    lib = ctypes.CDLL(path)  # already loaded by torch: the same handle
    names = ("sgemm_", "dgemm_", "MKL_Set_Num_Threads_Local")
    if not all(hasattr(lib, n) for n in names):
        return None
    setter = lib.MKL_Set_Num_Threads_Local
    setter.argtypes, setter.restype = [ctypes.c_int], ctypes.c_int
    addr = {np.dtype(np.float32): _address(lib.sgemm_), np.dtype(np.float64): _address(lib.dgemm_)}
    return Blas("mkl", addr, setter, _address(setter))


def _openblas() -> Blas:
    import scipy.linalg.cython_blas as cb

    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.argtypes, get_name.restype = [ctypes.py_object], ctypes.c_char_p
    get_ptr = ctypes.pythonapi.PyCapsule_GetPointer
    get_ptr.argtypes, get_ptr.restype = [ctypes.py_object, ctypes.c_char_p], ctypes.c_void_p
    addr = {}
    for dtype, name in ((np.float32, "sgemm"), (np.float64, "dgemm")):
        capsule = cb.__pyx_capi__[name]
        addr[np.dtype(dtype)] = get_ptr(capsule, get_name(capsule))
    setters = _openblas_setters()

    def set_threads(n: int) -> int:
        old = [s(n) for s in setters]
        return old[0] if old else 1

    return Blas("openblas", addr, set_threads if setters else None, 0)


def _openblas_setters() -> tuple:
    """openblas_set_num_threads_local of every loaded OpenBLAS (numpy and scipy each bring one), or
    none (another BLAS, or no /proc to find them in)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return ()
    setters = (getattr(ctypes.CDLL(path), "openblas_set_num_threads_local", None) for path in sorted(paths))
    return tuple(s for s in setters if s is not None)


def _works(blas: Blas) -> bool:
    """Compute a small row-major X W^T through the Fortran interface, as the loops call it, and
    compare with numpy, in both dtypes."""
    vp, I32 = ctypes.c_void_p, ctypes.c_int32
    for dtype, addr in blas.gemm.items():
        gen = np.random.default_rng(0)
        x, w = gen.standard_normal((3, 4)).astype(dtype), gen.standard_normal((5, 4)).astype(dtype)
        out = np.zeros((3, 5), dtype)
        ints = [I32(v) for v in (5, 3, 4, 4, 4, 5)]  # m, n, k, lda, ldb, ldc
        alpha, beta = np.ones(1, dtype), np.zeros(1, dtype)
        fn = ctypes.CFUNCTYPE(None, *[vp] * 13)(addr)
        fn(ctypes.c_char_p(b"T"), ctypes.c_char_p(b"N"), *map(ctypes.byref, ints[:3]), alpha.ctypes.data,
           w.ctypes.data, ctypes.byref(ints[3]), x.ctypes.data, ctypes.byref(ints[4]), beta.ctypes.data,
           out.ctypes.data, ctypes.byref(ints[5]))
        if not np.allclose(out, x @ w.T, rtol=1e-5, atol=1e-5):
            return False
    return True


@functools.cache
def blas() -> Blas:
    """The BLAS of the loops (see the module docstring)."""
    if os.environ.get("RNNKIT_BLAS", "").lower() != "scipy":
        found = _mkl()
        if found is not None and _works(found):
            return found
    return _openblas()
