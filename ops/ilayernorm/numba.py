"""numba kernel of ``ILayerNorm``, bit-identical to :func:`edgert.ops.ilayernorm.spec.reference`."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from edgert.ops._intmath.numba import isqrt_nb
from edgert.ops.ilayernorm.spec import check_inputs


@njit(cache=True, parallel=True)
def _ilayernorm_nb(x2d, bias, has_bias, out2d):
    rows, n = x2d.shape
    for r in prange(rows):
        total = np.int64(0)
        for c in range(n):
            total += np.int64(x2d[r, c])
        mean = total // n                       # numba keeps Python's floor division
        var = np.int64(0)
        for c in range(n):
            y = np.int64(x2d[r, c]) - mean
            var += y * y
        std = isqrt_nb(var)
        if std < 1:
            std = np.int64(1)
        factor = np.int64(2147483647) // std
        for c in range(n):
            v = ((np.int64(x2d[r, c]) - mean) * factor) >> 1
            if has_bias:
                v += np.int64(bias[c])
            out2d[r, c] = v


def numba_kernel(x: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """numba twin of ``spec.reference`` (bit-identical; no run-time range check)."""
    x = np.asarray(x)
    check_inputs(x, bias)
    x2d = np.ascontiguousarray(x).reshape(-1, x.shape[-1])
    b = np.zeros(1, np.int32) if bias is None else np.ascontiguousarray(bias)
    out = np.empty(x2d.shape, np.int32)
    _ilayernorm_nb(x2d, b, bias is not None, out)
    return out.reshape(x.shape)


kernel = numba_kernel
"""The registry's entry point (:attr:`edgert.ops._common.op.Op.numba_kernel`)."""
