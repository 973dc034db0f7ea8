"""numba kernel of ``ShiftMatMul``, bit-identical to :func:`edgert.ops.shift_matmul.spec.reference`.

The codes are decoded once per call into a shift and a sign mask per weight (``neg`` all ones
for a negative weight, ``keep`` all ones unless the weight is 0); each product is then
``(((x << shift) ^ neg) - neg) & keep`` (a two's complement negation by mask), accumulated in
int32 per output row. Under the spec's bound nothing wraps, so the order of the sums is free.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from edgert.ops.shift_matmul.spec import check_operands


def _decode(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes [K, N] -> (shift, neg, keep), int32 [K, N] each."""
    c = w.astype(np.int32)
    shift = np.maximum(np.abs(c) - 1, 0).astype(np.int32)
    neg = np.where(c < 0, -1, 0).astype(np.int32)
    keep = np.where(c != 0, -1, 0).astype(np.int32)
    return shift, neg, keep


@njit(cache=True, parallel=True)
def _shift_matmul_nb(a2, shift, neg, keep, out2):
    rows, depth = a2.shape
    cols = shift.shape[1]
    for i in prange(rows):
        acc = np.zeros(cols, np.int32)
        for k in range(depth):
            x = np.int32(a2[i, k])
            for j in range(cols):
                p = np.int32(x << shift[k, j])
                acc[j] += np.int32((np.int32(p ^ neg[k, j]) - neg[k, j]) & keep[k, j])
        out2[i, :] = acc


def numba_kernel(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """numba twin of ``spec.reference`` (int32 accumulation; bit-identical under the bound):
    int8|int16 [..., M, K] @ int8 codes [K, N] -> int32 [..., M, N]."""
    a, w = np.asarray(a), np.asarray(w)
    check_operands(a, w)
    k, n = w.shape
    a2 = np.ascontiguousarray(a).reshape(-1, k)
    out = np.empty((a2.shape[0], n), np.int32)
    _shift_matmul_nb(a2, *_decode(w), out)
    return out.reshape(*a.shape[:-1], n)


kernel = numba_kernel
"""The registry's entry point (:attr:`edgert.ops._common.op.Op.numba_kernel`)."""
