"""Operations of one ``IntMatMul`` call, from the spec's arithmetic.

``out[..., m, n] = sum_k a[..., m, k] * b[..., k, n]`` over B broadcast batches: per output
element K multiplies and K adds, so ``B * M * N * K`` of each. The multiply's kind is that of
the wider operand (``int8_mul`` when both are int8, else ``int16_mul``); the adds are
``int32_add``: the quantizer proves every partial sum fits int32 (the spec's precondition), so
int32 accumulation is exact. Bytes: ``a`` and ``b`` read once, the int32 output written once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgert.ops._common.op import OpCounts, tensor_bytes


def counts(input_shapes: Sequence[Sequence[int] | None], input_dtypes: Sequence[Any],
           attrs: Mapping[str, Any]) -> OpCounts:
    """Counts for operands ``(a [..., M, K], b [..., K, N])`` of these shapes/dtypes."""
    a_shape, b_shape = [list(s) for s in input_shapes[:2]]
    if len(a_shape) == 1:
        a_shape = [1, *a_shape]
    if len(b_shape) == 1:
        b_shape = [*b_shape, 1]
    batch = int(np.prod(np.broadcast_shapes(tuple(a_shape[:-2]), tuple(b_shape[:-2])),
                        dtype=np.int64))
    m, k, n = int(a_shape[-2]), int(a_shape[-1]), int(b_shape[-1])
    macs = batch * m * n * k
    narrow = all(np.dtype(d).itemsize == 1 for d in input_dtypes[:2])
    mul = OpCounts(int8_mul=macs) if narrow else OpCounts(int16_mul=macs)
    return mul + OpCounts(int32_add=macs, bytes_read=tensor_bytes(input_shapes, input_dtypes),
                          bytes_written=4 * batch * m * n)
