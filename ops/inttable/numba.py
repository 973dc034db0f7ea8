"""numba kernel of ``IntTable``, bit-identical to :func:`edgert.ops.inttable.spec.reference`."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from edgert.ops.inttable.spec import OFFSET, check_operands


@njit(cache=True, parallel=True)
def _lookup_nb(q1d, table, out1d):
    for i in prange(q1d.size):
        out1d[i] = table[np.int32(q1d[i]) + OFFSET]


def numba_kernel(q: np.ndarray, table: np.ndarray) -> np.ndarray:
    """numba twin of ``spec.reference`` (bit-identical): int8 ``q`` of any shape, int8/int16
    ``table`` [256] -> ``q``'s shape in the table's dtype."""
    q, table = np.asarray(q), np.ascontiguousarray(table)
    check_operands(q, table)
    q1d = np.ascontiguousarray(q).reshape(-1)
    out = np.empty(q1d.shape, table.dtype)
    _lookup_nb(q1d, table, out)
    return out.reshape(q.shape)


kernel = numba_kernel
"""The registry's entry point (:attr:`edgert.ops._common.op.Op.numba_kernel`)."""
