"""Operations of one ``ShiftMatMul`` call, from the spec's arithmetic.

``out[..., m, n] = sum_k shift(a[..., m, k], W[k, n])`` over R = prod(A's leading dims) rows:

    x << e                     1 shift per product (e = |c| - 1, decoded once per weight)
    sign (xor, subtract mask)  bitwise + 1 int32 add per product, counted with the add below
    acc = acc + p              1 int32 add per product

so ``R * N * K`` shifts and ``R * N * K`` int32 adds, and no multiply. The sign's negation is
a subtraction of the sign mask; a kernel that folds it into the accumulation (``acc - p``
for a negative weight) needs no more adds than this, so it is counted once, with the
accumulation. Decoding the codes (shift, sign and zero masks): 1 int32 add and 2 compares per
weight. Bytes: A and the codes read once, the int32 output written once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgert.ops._common.op import OpCounts, tensor_bytes


def counts(input_shapes: Sequence[Sequence[int] | None], input_dtypes: Sequence[Any],
           attrs: Mapping[str, Any]) -> OpCounts:
    """Counts for operands ``(a [..., M, K], w [K, N])`` of these shapes/dtypes."""
    a_shape, w_shape = [list(s) for s in input_shapes[:2]]
    rows = int(np.prod(a_shape[:-1], dtype=np.int64))
    k, n = int(w_shape[0]), int(w_shape[1])
    products = rows * n * k
    return OpCounts(shifts=products, int32_add=products + k * n, compares=2 * k * n,
                    bytes_read=tensor_bytes(input_shapes, input_dtypes),
                    bytes_written=4 * rows * n)
