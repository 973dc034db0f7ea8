"""numba kernel of ``LMulMatMul``, bit-identical to :func:`edgert.ops.lmul_matmul.spec.reference`.

Per output row: for k ascending, the row's L-Mul products with row k of B are formed as bit
patterns (int64 arithmetic, the spec's integer formula), read as float32 through a view of a
uint32 buffer and added into a float32 accumulator row: the spec's additions in its order.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from edgert.ops.lmul_matmul.spec import (INF, MAGNITUDE, MAX_FINITE, MIN_NORMAL, NAN, SIGN,
                                         check_mantissa_bits, check_operands, constant,
                                         truncation_mask)


@njit(cache=True, inline="always")
def _lmul_bits_nb(xb, yb, mask, c):
    """One L-Mul on bit patterns (int64 holding uint32 values) -> the result's bits (int64)."""
    ax = xb & MAGNITUDE
    ay = yb & MAGNITUDE
    x_zero = ax < MIN_NORMAL
    y_zero = ay < MIN_NORMAL
    x_inf = ax == INF
    y_inf = ay == INF
    if ax > INF or ay > INF or ((x_inf or y_inf) and (x_zero or y_zero)):
        return np.int64(NAN)
    sign = (xb ^ yb) & SIGN
    if x_inf or y_inf:
        return sign | INF
    if x_zero or y_zero:
        return sign
    s = (ax & mask) + (ay & mask) - c
    if s < MIN_NORMAL:
        return sign
    if s > MAX_FINITE:
        return sign | MAX_FINITE
    return sign | s


@njit(cache=True, parallel=True)
def _lmul_matmul_nb(a3, b3, a_of, b_of, mask, c, out3):
    rows = a3.shape[1]
    depth = a3.shape[2]
    cols = b3.shape[2]
    for t in prange(out3.shape[0] * rows):
        bi = t // rows
        i = t - bi * rows
        ai, bj = a_of[bi], b_of[bi]
        acc = np.zeros(cols, np.float32)
        prod = np.empty(cols, np.uint32)
        prod_f = prod.view(np.float32)
        for k in range(depth):
            xb = np.int64(a3[ai, i, k])
            for j in range(cols):
                prod[j] = np.uint32(_lmul_bits_nb(xb, np.int64(b3[bj, k, j]), mask, c))
            for j in range(cols):
                acc[j] = acc[j] + prod_f[j]
        out3[bi, i, :] = acc


def _batch_index(shape: tuple[int, ...], batch: tuple[int, ...]) -> np.ndarray:
    """For each output batch (row-major over ``batch``), the index of the operand's batch
    (row-major over ``shape``, broadcast into ``batch``)."""
    own = np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.int64).reshape(shape)
    return np.ascontiguousarray(np.broadcast_to(own, batch)).reshape(-1)


def numba_kernel(a: np.ndarray, b: np.ndarray, *, mantissa_bits: int) -> np.ndarray:
    """numba twin of ``spec.reference`` (bit-identical): float32 [..., M, K] @ [..., K, N]."""
    a, b = np.asarray(a), np.asarray(b)
    check_operands(a, b)
    m = check_mantissa_bits(mantissa_bits)
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    rows, depth, cols = a.shape[-2], a.shape[-1], b.shape[-1]
    a3 = np.ascontiguousarray(a).view(np.uint32).reshape(-1, rows, depth)
    b3 = np.ascontiguousarray(b).view(np.uint32).reshape(-1, depth, cols)
    a_of, b_of = _batch_index(a.shape[:-2], batch), _batch_index(b.shape[:-2], batch)
    out = np.empty((a_of.size, rows, cols), np.float32)
    _lmul_matmul_nb(a3, b3, a_of, b_of, np.int64(truncation_mask(m)), np.int64(constant(m)), out)
    return out.reshape(*batch, rows, cols)


kernel = numba_kernel
"""The registry's entry point (:attr:`edgert.ops._common.op.Op.numba_kernel`)."""
