"""Operations of one ``Shiftmax`` call, from the spec's arithmetic.

For ``q`` of N elements in R rows (N = R * L), per element (int64 throughout):

    max_row(q)                         1 compare
    x = q - max                        1 int64 add
    e = shift_exp(x, x0, n)            see edgert.ops._intmath.counts.SHIFT_EXP
    S = sum_row(e)                     1 int64 add
    (e * f + 2**(sh-1)) >> sh          1 int64 multiply, 1 int64 add, 1 shift
    min(., 2**(k-1) - 1)               1 compare
and per row ``f = (2**31 - 1) // max(S, 1)``: 1 int64 division, 1 compare. With ``exclude``,
each element also takes 2 selects (the row max and ``e`` skip left-out elements), counted as
compares. Bytes: ``q`` (and ``exclude``) read once, the k-bit output written once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgert.ops._intmath.counts import SHIFT_EXP
from edgert.ops._common.op import OpCounts, tensor_bytes
from edgert.ops.shiftmax.spec import out_dtype


def counts(input_shapes: Sequence[Sequence[int] | None], input_dtypes: Sequence[Any],
           attrs: Mapping[str, Any]) -> OpCounts:
    """Counts for inputs ``(q, exclude?)`` of these shapes/dtypes and ONNX ``attrs`` (``k``)."""
    shape = input_shapes[0]
    n = int(np.prod(shape, dtype=np.int64))
    rows = n // int(shape[-1]) if n else 0
    masked = len(input_shapes) > 1 and input_shapes[1] is not None
    per_element = SHIFT_EXP + OpCounts(compares=2 + (2 if masked else 0), int64_add=3,
                                       int64_mul=1, shifts=1)
    per_row = OpCounts(int64_div=1, compares=1)
    out = np.dtype(out_dtype(int(attrs["k"])))
    moved = OpCounts(bytes_read=tensor_bytes(input_shapes, input_dtypes),
                     bytes_written=n * out.itemsize)
    return per_element.times(n) + per_row.times(rows) + moved
