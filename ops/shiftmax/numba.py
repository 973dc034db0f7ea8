"""numba kernel of ``Shiftmax``, bit-identical to :func:`edgert.ops.shiftmax.spec.reference`."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from edgert.ops._intmath.numba import shift_exp_nb
from edgert.ops.shiftmax.spec import keep_mask, out_dtype


@njit(cache=True, parallel=True)
def _shiftmax_nb(q2d, keep2d, x0, n, k, out2d):
    rows, cols = q2d.shape
    sh = 31 - (k - 1)
    top = (np.int64(1) << (k - 1)) - 1
    for r in prange(rows):
        e = np.zeros(cols, np.int64)
        mx = np.iinfo(np.int64).min
        for c in range(cols):
            if keep2d[r, c]:
                mx = max(mx, np.int64(q2d[r, c]))
        s = np.int64(0)
        for c in range(cols):
            if keep2d[r, c]:
                e[c] = shift_exp_nb(np.int64(q2d[r, c]) - mx, x0, n)
                s += e[c]
        f = np.int64(2147483647) // max(s, np.int64(1))
        for c in range(cols):
            out2d[r, c] = min((e[c] * f + (np.int64(1) << (sh - 1))) >> sh, top)


def numba_kernel(q: np.ndarray, exclude: np.ndarray | None = None, *, x0: int, n: int,
                 k: int = 16) -> np.ndarray:
    """numba twin of :func:`~edgert.ops.shiftmax.spec.reference` (bit-identical)."""
    q2d = np.ascontiguousarray(q).reshape(-1, q.shape[-1])
    keep2d = np.ascontiguousarray(keep_mask(q, exclude)).reshape(q2d.shape)
    out = np.empty(q2d.shape, out_dtype(k))
    _shiftmax_nb(q2d, keep2d, np.int64(x0), np.int64(n), np.int64(k), out)
    return out.reshape(q.shape)


kernel = numba_kernel
"""The registry's entry point (:attr:`edgert.ops._common.op.Op.numba_kernel`)."""
