"""numba kernel of ``IntMatMul``, bit-identical to :func:`edgert.ops.intmatmul.spec.reference`."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from edgert.ops.intmatmul.spec import check_operands


@njit(cache=True, parallel=True)
def _matmul_nb(a3, b3, out3):
    batch, rows, depth = a3.shape
    cols = b3.shape[2]
    b_batch = b3.shape[0]
    for t in prange(batch * rows):
        bi = t // rows
        i = t - bi * rows
        bj = bi if b_batch > 1 else 0
        acc = np.zeros(cols, np.int32)
        for k in range(depth):
            av = np.int32(a3[bi, i, k])
            for j in range(cols):
                acc[j] += av * np.int32(b3[bj, k, j])
        out3[bi, i, :] = acc


def numba_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """numba twin of ``spec.reference`` (int32 accumulation; bit-identical under the bound)."""
    a, b = np.asarray(a), np.asarray(b)
    check_operands(a, b)
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    a3 = np.ascontiguousarray(np.broadcast_to(a, (*batch, m, k))).reshape(-1, m, k)
    if b.ndim == 2:
        b3 = np.ascontiguousarray(b).reshape(1, k, n)
    else:
        b3 = np.ascontiguousarray(np.broadcast_to(b, (*batch, k, n))).reshape(-1, k, n)
    out = np.empty((a3.shape[0], m, n), np.int32)
    _matmul_nb(a3, b3, out)
    return out.reshape(*batch, m, n)


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """numpy ``matmul`` shapes (rank-1 operands too) on :func:`numba_kernel`: int32 out.

    The registry's entry point (:attr:`edgert.ops._common.op.Op.numba_kernel`) and the kernel of the
    standard ``MatMulInteger`` in the numba backend."""
    vec_a, vec_b = a.ndim == 1, b.ndim == 1
    out = numba_kernel(a[None, :] if vec_a else a, b[:, None] if vec_b else b)
    if vec_b:
        out = out[..., 0]
    if vec_a:
        out = out[..., 0] if vec_b else out[..., 0, :]
    return out


kernel = matmul
