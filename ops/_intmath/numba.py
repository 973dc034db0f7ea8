"""Scalar numba twins of :mod:`edgert.ops._intmath.spec` (same arithmetic, same results), for
use inside ``@njit`` kernels."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def shift_exp_nb(x: np.int64, x0: np.int64, n: np.int64) -> np.int64:
    """Scalar numba twin of :func:`~edgert.ops._intmath.spec.shift_exp`."""
    x = x + (x >> 1) - (x >> 4)
    if x < n * x0:
        x = n * x0
    qi = x // x0
    rem = x - qi * x0
    e = (rem >> 1) - x0
    return e << (n - qi)


@njit(cache=True)
def isqrt_nb(v: np.int64) -> np.int64:
    """Scalar numba twin of :func:`~edgert.ops._intmath.spec.isqrt` (same start, same iteration,
    same result)."""
    if v <= 0:
        return np.int64(0)
    bits = np.int64(0)
    t = v
    while t > 0:
        bits += 1
        t >>= 1
    y = np.int64(1) << ((bits + 1) // 2)
    while True:
        z = (y + v // y) >> 1
        if z >= y:
            return y
        y = z
