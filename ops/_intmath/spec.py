"""Integer primitives shared by the I-ViT ops, numpy (``docs/methods/ivit.md``): the
specification, int64 throughout. Twins: :mod:`.numba` (scalar numba), :mod:`.tvm` (TIR).
Shifts are arithmetic (floor toward -inf); ``//`` of a non-negative numerator by a positive
divisor is floor.
"""

from __future__ import annotations

import numpy as np

INT31_MAX = (1 << 31) - 1
ISQRT_STEPS = 7
"""Guarded Newton steps of the TE isqrt. From y0 = 2**ceil(bits/2) <= 2*sqrt(v), the real Newton
error after 5 steps is < 1.1e-15 * sqrt(v) < 4e-6 for v < 2**63; integer iterates never exceed the
real ones, so y5 <= floor(sqrt(v)) + 1 and one more step settles it; the 7th is a margin (a step
at the fixed point changes nothing). Measured: at most 6 decreasing steps over 10**6 hard values."""


def shift_exp(x: np.ndarray, x0: int, n: int) -> np.ndarray:
    """Integer exp for ``x <= 0`` (I-ViT steps 2-7): returns ``e ~ exp(x*s) * |x0| * 2**n``.

    Args:
        x: int64 array, all <= 0, at scale ``s``.
        x0: ``floor(-1/s)``, the (negative) integer standing for -1 after the log2(e) fold.
        n: shift budget; the result is < ``|x0| * 2**(n+1)``.
    """
    x = x.astype(np.int64)
    x = x + (x >> 1) - (x >> 4)             # * 1.4375 ~ log2(e)
    x = np.maximum(x, n * x0)
    qi = x // x0                            # >= 0
    rem = x - qi * x0                       # in (x0, 0]
    e = (rem >> 1) - x0                     # 2**(-f) ~ 1 - f/2
    return e << (n - qi)


def isqrt(v: np.ndarray) -> np.ndarray:
    """Exact floor square root of non-negative int64 values (integer Newton iterations).

    Starts from ``2**ceil(bits(v)/2)`` (>= sqrt(v)) and iterates ``y = (y + v//y) // 2``
    while it decreases; the last value is ``floor(sqrt(v))``. ``isqrt(0) == 0``.
    """
    v = np.asarray(v, dtype=np.int64)
    out = np.empty_like(v)
    flat, res = v.reshape(-1), out.reshape(-1)
    for i in range(flat.size):
        res[i] = _isqrt_scalar(int(flat[i]))
    return out


def _isqrt_scalar(v: int) -> int:
    if v < 0:
        raise ValueError("isqrt of a negative number")
    if v == 0:
        return 0
    y = 1 << ((v.bit_length() + 1) // 2)
    while True:
        z = (y + v // y) >> 1
        if z >= y:
            return y
        y = z
