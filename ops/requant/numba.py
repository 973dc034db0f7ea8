"""numba kernel of ``Requant``, bit-identical to :func:`edgert.ops.requant.spec.reference`."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from edgert.ops.requant.spec import OUT_DTYPES


@njit(cache=True, parallel=True)
def _requant_nb(q2d, m, e, lo, hi, out2d):
    rows, cols = q2d.shape
    per_channel = m.size > 1
    for r in prange(rows):
        for c in range(cols):
            mm = m[c] if per_channel else m[0]
            ee = e[c] if per_channel else e[0]
            v = (np.int64(q2d[r, c]) * mm + (np.int64(1) << (ee - 1))) >> ee
            out2d[r, c] = min(max(v, lo), hi)


def numba_kernel(q: np.ndarray, m: np.ndarray, e: np.ndarray, *, lo: int, hi: int,
                 to: str = "int8", axis: int = -1) -> np.ndarray:
    """numba twin of :func:`~edgert.ops.requant.spec.reference` (bit-identical)."""
    q = np.asarray(q)
    m = np.ascontiguousarray(np.asarray(m, np.int64).reshape(-1))
    e = np.ascontiguousarray(np.asarray(e, np.int64).reshape(-1))
    moved = m.size > 1 and q.ndim > 1 and axis not in (-1, q.ndim - 1)
    x = np.moveaxis(q, axis, -1) if moved else q
    q2d = np.ascontiguousarray(x).reshape(-1, x.shape[-1] if x.ndim else 1)
    out = np.empty(q2d.shape, OUT_DTYPES[to])
    _requant_nb(q2d, m, e, np.int64(lo), np.int64(hi), out)
    out = out.reshape(x.shape)
    return np.ascontiguousarray(np.moveaxis(out, -1, axis)) if moved else out


kernel = numba_kernel
"""The registry's entry point (:attr:`edgert.ops._common.op.Op.numba_kernel`)."""
