"""The private APIs the fused engine relies on (rnnkit.kernels' docstring names each, with the
test that fails if it changes), used here directly: an upgrade of torch, numba or llvmlite that
changes one fails here by name, instead of as a wrong engine choice elsewhere or a build that does
not link."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch


def test_torchs_mode_checks():
    """layers.call_mode: which engine a call takes."""
    from torch.autograd import forward_ad

    seen = []

    def f(x):
        seen.append(torch._C._are_functorch_transforms_active())
        return x.sum()

    torch.func.grad(f)(torch.ones(2))
    assert torch._C._are_functorch_transforms_active() is False and seen == [True]
    assert forward_ad._current_level == -1
    with forward_ad.dual_level():
        assert forward_ad._current_level >= 0
    assert torch._C._get_tracing_state() is None
    assert torch._C._is_any_autocast_enabled() is False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch._C._is_any_autocast_enabled() is True


def test_onnx_exporters_flag():
    """layers._in_onnx_export reads the dynamo exporter's own flag (optional: without the module
    it falls back on torch.onnx.is_in_onnx_export)."""
    try:
        from torch.onnx._internal.exporter import _flags
    except ImportError:
        pytest.skip("this torch has no torch.onnx._internal.exporter._flags")
    assert _flags._is_onnx_exporting is False


def test_use_counts():
    """buffers: a kept call's arrays are free when nothing but the work uses them."""
    t = torch.zeros(4)
    storage = t.untyped_storage()
    assert t._use_count() == 1
    before = torch._C._storage_Use_Count(storage._cdata)
    view = t[1:]
    assert torch._C._storage_Use_Count(storage._cdata) == before + 1
    del view
    assert torch._C._storage_Use_Count(storage._cdata) == before


def test_function_bases_apply():
    """fused: FusedLayer's apply without the Python wrapper."""
    from rnnkit.kernels.fused import FusedLayer, _apply

    assert _apply == torch._C._FunctionBase.__dict__["apply"].__get__(None, FusedLayer)


def test_mkl_and_openmp_symbols():
    """blas and launch look these up by name in torch's libraries; each is optional (OpenBLAS and a
    pool of Python threads without them), so a torch without them is reported, not failed."""
    from rnnkit.kernels import blas, launch

    found = blas.blas()
    if found.name != "mkl":
        pytest.skip(f"this torch has no MKL (BLAS: {found.name})")
    assert found.set_threads_address != 0 and set(found.gemm) == {np.dtype(np.float32), np.dtype(np.float64)}
    assert launch.openmp() is not None


def test_numbas_cfunc_and_intrinsics_make_a_loadable_object(tmp_path):
    """build: numba's ``@intrinsic`` codegen (with ``context.get_dummy_value``) inside a cfunc, whose
    ``inspect_llvm()`` and ``native_name`` give the module that build.object_code links, checks and
    emits, and compiled._load loads without numba; the function adds through an atomic and a
    pointer made from an address, as the loops do."""
    from numba import carray, cfunc, types

    from rnnkit.kernels import build, compiled
    from rnnkit.kernels.expmath import JIT
    from rnnkit.kernels.products import pointer
    from rnnkit.kernels.sync import atomic_add, atomic_store

    options = {k: v for k, v in JIT.items() if k != "nogil"}

    def body(data):
        a = carray(pointer(data, np.int64(0)), (2,))
        atomic_store(data, a[0] * 10)
        atomic_add(data + 8, 1)

    fn = cfunc(types.void(types.int64), **options)(body)
    where = tmp_path / "probe.o"
    where.write_bytes(build.object_code({"rnnkit_probe": fn}))
    addresses, engine = compiled._load(str(where), ("rnnkit_probe",))
    values = np.array([4, 7], np.int64)
    ctypes.CFUNCTYPE(None, ctypes.c_int64)(addresses["rnnkit_probe"])(values.ctypes.data)
    assert values.tolist() == [40, 8]
    del engine
