"""A step's product at the small sizes: the loops' compiled register-blocked loop
(``rnnkit.kernels.loops._small_mm``) against the BLAS the loops call otherwise (MKL's ``?gemm_`` by
address), one thread, same arrays: microseconds per product and whether the bits agree (beta 0,
then beta 1 onto the same C). ``small`` says whether the loops pick the compiled loop for it.

    .venv/bin/python benchmarks/small_products.py
    .venv/bin/python benchmarks/small_products.py --shapes 16x128x32,32x512x128 --dtypes float32
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from numba import njit

from rnnkit.kernels import blas, loops

# rows x columns x depth: B32 T50 H32 on two row shards (LSTM forward and backward, RNN, GRU), bigger
# ones up to and past the switch to BLAS
SHAPES = "16x128x32,16x32x128,16x32x32,16x96x32,16x32x96,16x192x64,16x64x192,32x256x64,32x64x256,32x512x128"


@njit(nogil=True)
def _compiled(a, b, c, reps, accumulate):
    m, k = a.shape
    n = b.shape[1]
    for _ in range(reps):
        loops._small_mm(c.dtype.type(0.0), loops._address(a), k, loops._address(b), n, loops._address(c), n,
                        m, n, k, accumulate)


@njit(nogil=True)
def _blas(gemm, a, b, c, reps, beta):
    ws = loops._workspace(a.dtype)
    m, k = a.shape
    n = b.shape[1]
    for _ in range(reps):  # row-major C = A B is column-major C^T = B^T A^T
        loops._gemm(gemm, ws, False, n, m, k, loops._address(b), n, loops._address(a), k, beta,
                    loops._address(c), n)


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
    print(f"{'dtype':<8} {'rows x cols x depth':>20} {'small':>6} {'compiled':>9} {'BLAS':>8} {'bits beta0/1':>13}")
    rng = np.random.default_rng(0)
    for dtype in args.dtypes.split(","):
        dt = np.dtype(dtype)
        gemm = blas.blas().gemm[dt]
        for shape in args.shapes.split(","):
            m, n, k = (int(v) for v in shape.split("x"))
            a, b = rng.standard_normal((m, k)).astype(dt), rng.standard_normal((k, n)).astype(dt)
            same = []
            for accumulate in (False, True):
                c1 = rng.standard_normal((m, n)).astype(dt)
                c2 = c1.copy()
                _compiled(a, b, c1, 1, accumulate)
                _blas(gemm, a, b, c2, 1, float(accumulate))
                same.append("same" if np.array_equal(c1, c2) else "differ")
            reps = max(20, int(2e7 / (m * n * k)))
            mine = _best_us(lambda r: _compiled(a, b, c1, r, False), reps)
            theirs = _best_us(lambda r: _blas(gemm, a, b, c2, r, 0.0), reps)
            small = loops._small.py_func(k, n, dt.itemsize)
            print(f"{dtype:<8} {shape:>20} {'yes' if small else 'no':>6} {mine:>9.2f} {theirs:>8.2f} "
                  f"{'/'.join(same):>13}", flush=True)


if __name__ == "__main__":
    main()
