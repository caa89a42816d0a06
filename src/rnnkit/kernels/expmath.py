"""exp, sigmoid and tanh for the compiled gate loops, in the argument's own dtype.

numba has no vector exp without Intel's SVML, so exp(x) for x <= 0 is written out for LLVM to
vectorize the gate loops around it: x = -m ln2 + r with |r| <= ln2/2, exp(r) by its Taylor
polynomial (degree 13 in float64, 7 in float32, each truncated below a tenth of its type's epsilon),
2^-m built from its exponent bits (a table lookup would be a gather, the slowest instruction of the
vectorized loop). Arguments below -60 are clamped: exp(-60) is 9e-27, far below any tolerance, and
the clamp keeps 2^-m a normal number in float32; NaN passes through. Everything computes in the
argument's type F: numba types a Python float constant as float64, which would turn float32 gate
math into float64 and halve the vector width, so every constant is written F(...).

Importing this module registers these as the compiled implementations of
:func:`rnnkit.kernels.ops.sigmoid`, ``tanh`` and ``relu`` (the names a cell's step is written
with).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from . import ops

# The compile options of every compiled function of the engine: no GIL, no division-by-zero checks
# (they would keep LLVM from vectorizing ``1 / (1 + e)``), and multiply-adds may fuse (one rounding
# fewer where the machine has FMA: ``fmuladd``, left to the backend).
JIT = dict(nogil=True, error_model="numpy", fastmath={"contract"})

_LOG2E = 1.4426950408889634
_LN2_HI = 0.693145751953125  # ln 2 split so that m * _LN2_HI is exact for m < 2^10
_LN2_LO = 1.4286068203094173e-06


@intrinsic
def _pow2_neg(typingctx, m):
    """2^-m for a whole float m in [0, 126], as the bits of a float of m's type."""
    width = m.bitwidth
    mantissa, bias = (23, 127) if width == 32 else (52, 1023)

    def codegen(context, builder, sig, args):
        int_t = ir.IntType(width)
        exponent = builder.sub(ir.Constant(int_t, bias), builder.fptosi(args[0], int_t))
        return builder.bitcast(builder.shl(exponent, ir.Constant(int_t, mantissa)), args[0].type)

    return m(m), codegen


def _exp_poly(r):
    """exp(r) for |r| <= ln2/2 by its Taylor polynomial: degree 13 (truncation < 5e-18 relative) in
    float64, degree 7 (< 5.2e-9, a tenth of float32's epsilon) in float32."""


@njit(**JIT, inline="always")
def _exp_tail(p, r):
    """Horner from p, the polynomial's terms from degree 7 up, down through 1/6! to 1/0!."""
    F = type(r)
    p = p * r + F(1.0 / 720.0)
    p = p * r + F(1.0 / 120.0)
    p = p * r + F(1.0 / 24.0)
    p = p * r + F(1.0 / 6.0)
    p = p * r + F(0.5)
    p = p * r + F(1.0)
    return p * r + F(1.0)


@overload(_exp_poly, inline="always", jit_options=JIT)
def _exp_poly_typed(r):
    F = r
    if r.bitwidth == 32:
        return lambda r: _exp_tail(F(1.0 / 5040.0), r)

    def float64_poly(r):
        p = F(1.0 / 6227020800.0)  # 1/13!, then Horner down to 1/7!
        p = p * r + F(1.0 / 479001600.0)
        p = p * r + F(1.0 / 39916800.0)
        p = p * r + F(1.0 / 3628800.0)
        p = p * r + F(1.0 / 362880.0)
        p = p * r + F(1.0 / 40320.0)
        return _exp_tail(p * r + F(1.0 / 5040.0), r)
    return float64_poly


@njit(**JIT, inline="always")
def exp_neg(x):
    """exp(x) for x <= 0 (see the module docstring)."""
    F = type(x)
    xc = x if x > F(-60.0) else F(-60.0)
    m = np.floor(F(0.5) - xc * F(_LOG2E))  # 0 <= m <= 87, in type F (math.floor gives an int)
    r = xc + m * F(_LN2_HI) + m * F(_LN2_LO)
    return _exp_poly(r) * _pow2_neg(m) if x == x else x


@njit(**JIT)
def sigmoid(a):
    F = type(a)
    e = exp_neg(-abs(a))
    d = F(1.0) / (F(1.0) + e)
    return d if a >= F(0.0) else e * d


@njit(**JIT)
def tanh(a):
    F = type(a)
    e = exp_neg(F(-2.0) * abs(a))
    v = (F(1.0) - e) / (F(1.0) + e)
    return v if a >= F(0.0) else -v


@njit(**JIT)
def relu(a):
    return max(a, type(a)(0.0))


@overload(ops.sigmoid, jit_options=JIT)
def _sigmoid(a):
    if isinstance(a, types.Float):
        return lambda a: sigmoid(a)


@overload(ops.tanh, jit_options=JIT)
def _tanh(a):
    if isinstance(a, types.Float):
        return lambda a: tanh(a)


@overload(ops.relu, jit_options=JIT)
def _relu(a):
    if isinstance(a, types.Float):
        return lambda a: relu(a)
