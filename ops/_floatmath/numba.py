"""Scalar numba twins of :mod:`edgert.ops._floatmath.spec` (the same roundings in the same
order), for use inside ``@njit`` kernels. Every constant is a float32 so that no operation
widens to float64; numba does not contract a multiply and an add."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from edgert.ops._floatmath.spec import COEFFS, EXP_MAX, EXP_MIN, HALF, LN2_HI, LN2_LO, LOG2E

_C0, _C1, _C2, _C3, _C4, _C5, _C6 = COEFFS
_ZERO = np.float32(0.0)


@njit(cache=True, inline="always")
def exp_neg_nb(t: np.float32) -> np.float32:
    """Scalar twin of :func:`~edgert.ops._floatmath.spec.exp_neg` (float32 in, float32 out)."""
    if t < EXP_MIN:
        return _ZERO
    tc = t if t < EXP_MAX else EXP_MAX          # t >= EXP_MIN here
    y = tc * LOG2E
    k = np.float32(math.floor(y + HALF))
    r = (tc - k * LN2_HI) - k * LN2_LO
    p = _C6
    p = p * r + _C5
    p = p * r + _C4
    p = p * r + _C3
    p = p * r + _C2
    p = p * r + _C1
    p = p * r + _C0
    ki = min(max(int(k), -126), 127)
    return np.float32(math.ldexp(np.float64(p), ki))     # p * 2**k: exact, a normal float
