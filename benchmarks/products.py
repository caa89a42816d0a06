"""A step's product: the loops' compiled register-blocked loop over a packed right-hand matrix
(``packed_mm`` of rnnkit.kernels.products, the matrix packed once beforehand as the loops pack W_hh once
per call) against the BLAS the loops would call otherwise (MKL's ``?gemm_`` by address, which packs
it again at every call), one thread, same arrays: microseconds per product, the packing's own time
(once per layer call, not per step), and whether the bits agree (beta 0, then beta 1 onto the same C).

    .venv/bin/python benchmarks/products.py
    .venv/bin/python benchmarks/products.py --shapes 16x128x32,32x512x256 --dtypes float32
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from numba import njit

from rnnkit.kernels import blas, compiled
from rnnkit.kernels.products import address, call, gemm as call_gemm

# rows x columns x depth: B32 T50 H32 on two row shards (LSTM forward and backward), B64 T200 H128 on
# two row shards (LSTM), B32 T50 H256 on two row shards (LSTM forward, backward), on unit shards, and
# on one thread; bigger ones
SHAPES = ("16x128x32,16x32x128,32x512x128,32x128x512,16x1024x256,16x256x1024,32x512x256,32x128x1024,"
          "32x1024x256,64x2048x512,32x4096x1024")


# The product entry points are called through their addresses, as the loops call them (the
# compiled objects of rnnkit.kernels.compiled), from a numba loop, so that no Python call is timed.

@njit(nogil=True)
def _pack(pack_columns, b, P):
    call(pack_columns, (address(b), np.int64(b.shape[0]), np.int64(b.shape[1]), address(P), np.int64(0),
                        np.int64(b.shape[0]), np.int64(0), np.int64(b.shape[1])))


@njit(nogil=True)
def _packed(packed_mm, a, P, c, reps, accumulate):
    m, k = a.shape
    n = c.shape[1]
    for _ in range(reps):
        call(packed_mm, (address(a), np.int64(k), address(P), np.int64(k), np.int64(n), address(c), np.int64(n),
                         np.int64(m), np.int64(accumulate)))


@njit(nogil=True)
def _blas(gemm, a, b, c, reps, beta):
    ws = np.empty(8, np.int32)
    scal = np.empty(2, a.dtype)
    m, k = a.shape
    n = b.shape[1]
    for _ in range(reps):  # row-major C = A B is column-major C^T = B^T A^T
        call_gemm(gemm, ws, scal, False, n, m, k, address(b), n, address(a), k, beta, address(c), n)


def _best_us(job, reps: int, rounds: int = 5) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        job(reps)
        times.append((time.perf_counter() - t0) / reps * 1e6)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=SHAPES, help="rows x columns x depth, comma-separated")
    parser.add_argument("--dtypes", default="float32,float64")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"BLAS: {blas.blas().name}; microseconds per product, best of 5")
    print(f"{'dtype':<8} {'rows x cols x depth':>20} {'packed':>9} {'BLAS':>9} {'BLAS/packed':>11} {'pack':>8} "
          f"{'bits beta0/1':>13}")
    rng = np.random.default_rng(0)
    for dtype in args.dtypes.split(","):
        dt = np.dtype(dtype)
        gemm = blas.blas().gemm[dt]
        entries = compiled.products(dtype)
        for shape in args.shapes.split(","):
            m, n, k = (int(v) for v in shape.split("x"))
            a, b = rng.standard_normal((m, k)).astype(dt), rng.standard_normal((k, n)).astype(dt)
            P = np.empty(b.size, dt)
            _pack(entries["pack_columns"], b, P)
            same = []
            for accumulate in (False, True):
                c1 = rng.standard_normal((m, n)).astype(dt)
                c2 = c1.copy()
                _packed(entries["packed_mm"], a, P, c1, 1, accumulate)
                _blas(gemm, a, b, c2, 1, float(accumulate))
                same.append("same" if np.array_equal(c1, c2) else "differ")
            reps = max(20, int(2e7 / (m * n * k)))
            mine = _best_us(lambda r: _packed(entries["packed_mm"], a, P, c1, r, False), reps)
            theirs = _best_us(lambda r: _blas(gemm, a, b, c2, r, 0.0), reps)
            pack = _best_us(lambda r: [_pack(entries["pack_columns"], b, P) for _ in range(r)], max(5, reps // 10))
            print(f"{dtype:<8} {shape:>20} {mine:>9.2f} {theirs:>9.2f} {theirs / mine:>11.2f} {pack:>8.2f} "
                  f"{'/'.join(same):>13}", flush=True)


if __name__ == "__main__":
    main()
