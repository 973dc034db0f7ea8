"""Operations of one ``LMulMatMul`` call, from the spec's arithmetic.

``out[..., i, j] = sum_k lmul(a[..., i, k], b[..., k, j])`` over B broadcast batches.
The spec's ``s = |x| + |y| - C`` is counted in the form a kernel would use: ``|x| - C`` is
formed once per element of A (it does not depend on j), so each product is

    s = (|x| - C) + |y|        1 int32 add (the L-Mul itself: no multiply)
    range checks on s          2 compares (underflow -> 0, overflow -> largest finite)
    acc = acc + p              1 fp32 add

and each element of A and of B (per batch that reads it) costs its classification (zero /
denormal, Inf / NaN): 2 compares, plus for A the ``- C``: 1 int32 add. The masks and the sign
xor are bitwise operations, which ``OpCounts`` does not count (they cost less than an add).
Bytes: A and B read once, the float32 output written once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgert.ops._common.op import OpCounts, tensor_bytes


def counts(input_shapes: Sequence[Sequence[int] | None], input_dtypes: Sequence[Any],
           attrs: Mapping[str, Any]) -> OpCounts:
    """Counts for operands ``(a [..., M, K], b [..., K, N])`` of these shapes (float32)."""
    a_shape, b_shape = [list(s) for s in input_shapes[:2]]
    batch = int(np.prod(np.broadcast_shapes(tuple(a_shape[:-2]), tuple(b_shape[:-2])),
                        dtype=np.int64))
    m, k, n = int(a_shape[-2]), int(a_shape[-1]), int(b_shape[-1])
    products = batch * m * n * k
    per_product = OpCounts(int32_add=1, compares=2, fp32_add=1).times(products)
    a_elems, b_elems = batch * m * k, batch * k * n
    operands = OpCounts(int32_add=a_elems, compares=2 * (a_elems + b_elems))
    return per_product + operands + OpCounts(
        bytes_read=tensor_bytes(input_shapes, input_dtypes), bytes_written=4 * batch * m * n)
