"""Operations of one ``ILayerNorm`` call, from the spec's arithmetic.

For ``x`` of N elements in R rows of L channels (int64 throughout), per element:

    sum(x)                          1 int64 add
    y = x - mean                    1 int64 add
    var = sum(y * y)                1 int64 multiply, 1 int64 add
    ((y * factor) >> 1) [+ bias]    1 int64 multiply, 1 shift [, 1 int64 add]
and per row: ``mean = sum // L`` and ``factor = (2**31 - 1) // std`` (2 int64 divisions),
``std = max(isqrt(var), 1)`` (1 compare + ``ISQRT`` of :mod:`edgert.ops._intmath.counts`, an
upper bound on the Newton steps). Bytes: ``x`` and ``bias`` read once, int32 written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgert.ops._intmath.counts import ISQRT
from edgert.ops._common.op import OpCounts, tensor_bytes


def counts(input_shapes: Sequence[Sequence[int] | None], input_dtypes: Sequence[Any],
           attrs: Mapping[str, Any]) -> OpCounts:
    """Counts for inputs ``(x, bias?)`` of these shapes/dtypes (no attributes)."""
    shape = input_shapes[0]
    n = int(np.prod(shape, dtype=np.int64))
    rows = n // int(shape[-1]) if n else 0
    has_bias = len(input_shapes) > 1 and input_shapes[1] is not None
    per_element = OpCounts(int64_add=3 + int(has_bias), int64_mul=2, shifts=1)
    per_row = ISQRT + OpCounts(int64_div=2, compares=1)
    return per_element.times(n) + per_row.times(rows) + OpCounts(
        bytes_read=tensor_bytes(input_shapes, input_dtypes), bytes_written=4 * n)
