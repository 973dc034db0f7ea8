"""numba kernel of ``ShiftGELU``, bit-identical to :func:`edgert.ops.shiftgelu.spec.reference`."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from edgert.ops._intmath.numba import shift_exp_nb
from edgert.ops.shiftgelu.spec import check_input


@njit(cache=True, parallel=True)
def _shiftgelu_nb(q1d, x0, n, out1d):
    for i in prange(q1d.size):
        v = np.int64(q1d[i])
        m = v if v > 0 else np.int64(0)
        e1 = shift_exp_nb(v - m, x0, n)
        e2 = shift_exp_nb(-m, x0, n)
        sig = ((np.int64(2147483647) // (e1 + e2)) * e1) >> 24
        out1d[i] = v * sig


def numba_kernel(q: np.ndarray, *, x0: int, n: int) -> np.ndarray:
    """numba twin of ``spec.reference`` (bit-identical): int8/int16 in, int32 out, same shape."""
    q = np.asarray(q)
    check_input(q, x0, n)
    q1d = np.ascontiguousarray(q).reshape(-1)
    out = np.empty(q1d.shape, np.int32)
    _shiftgelu_nb(q1d, np.int64(x0), np.int64(n), out)
    return out.reshape(q.shape)


kernel = numba_kernel
"""The registry's entry point (:attr:`edgert.ops._common.op.Op.numba_kernel`)."""
