"""Operations of one ``ShiftGELU`` call, from the spec's arithmetic.

Per element of ``q`` (int64 throughout):

    m = max(q, 0)                          1 compare
    e1 = shift_exp(q - m, x0, n)           1 int64 add + SHIFT_EXP
    e2 = shift_exp(-m, x0, n)              1 int64 add (negation) + SHIFT_EXP
    (2**31 - 1) // (e1 + e2)               1 int64 add, 1 int64 division
    sig = (. * e1) >> 24                   1 int64 multiply, 1 shift
    out = q * sig                          1 int64 multiply

(``SHIFT_EXP``: :mod:`edgert.ops._intmath.counts`.) The TVM kernel replaces all of it by one
table lookup per element; these are the spec's counts. Bytes: ``q`` read once, int32 written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgert.ops._intmath.counts import SHIFT_EXP
from edgert.ops._common.op import OpCounts, tensor_bytes


def counts(input_shapes: Sequence[Sequence[int] | None], input_dtypes: Sequence[Any],
           attrs: Mapping[str, Any]) -> OpCounts:
    """Counts for the input ``(q,)`` of this shape/dtype (``attrs`` do not change them)."""
    n = int(np.prod(input_shapes[0], dtype=np.int64))
    per_element = SHIFT_EXP.times(2) + OpCounts(compares=1, int64_add=3, int64_div=1,
                                                int64_mul=2, shifts=1)
    return per_element.times(n) + OpCounts(bytes_read=tensor_bytes(input_shapes, input_dtypes),
                                           bytes_written=4 * n)
