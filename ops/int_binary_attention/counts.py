"""Operations of one ``IntBinaryAttention`` call, from the spec's arithmetic.

N = batch x heads, S queries, T keys, D vector length, Dv value columns, b bits.

Codes, per vector: b * D int8 products summed in int32 (b * D int8_mul, int32_add), b
compares (the signs) and b shifts and int32 adds (packing).

Quadratic form, per score: 1 popcount, 1 shift, 1 int32 add (``b - 2 popcount``; the xor is
bitwise, not counted), and 1 int32 multiply when a Multiplier is given.

Linear form, per key: b * (Dv + 1) signed int32 additions into ``H^T V`` and the key sums, Dv
into the value sums; per query row b * (Dv + 1) signed additions, Dv + 1 int32 multiplies by c
and additions; per output one shift and one add (``num * 2**(frac+1) + den``), one doubling
(a shift) and one int64 division. The bit tests are bitwise.

Bytes: every input read once, the int32 output written once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgert.ops._common.op import OpCounts, tensor_bytes

SCORE = OpCounts(popcounts=1, shifts=1, int32_add=1)
"""Operations of one popcount score."""


def counts(input_shapes: Sequence[Sequence[int] | None], input_dtypes: Sequence[Any],
           attrs: Mapping[str, Any]) -> OpCounts:
    """Counts for ``(Q [..., H, S, D], K [..., H, T, D], Proj, Multiplier?, V?)``."""
    q, k = list(input_shapes[0]), list(input_shapes[1])
    has_mult = len(input_shapes) > 3 and input_shapes[3] is not None
    bits = int(attrs.get("bits", 16))
    form = attrs.get("form", "quadratic")
    form = form.decode() if isinstance(form, bytes) else form
    n = int(np.prod(q[:-2], dtype=np.int64))
    s, t, d = int(q[-2]), int(k[-2]), int(q[-1])
    code = OpCounts(int8_mul=bits * d, int32_add=bits * d + bits, compares=bits, shifts=bits)
    codes = code.times(s + t)
    if form == "quadratic":
        per_score = SCORE + OpCounts(int32_mul=int(has_mult))
        return (codes + per_score.times(s * t)).times(n) + OpCounts(
            bytes_read=tensor_bytes(input_shapes, input_dtypes), bytes_written=4 * n * s * t)
    dv = int(input_shapes[4][-1])
    per_key = OpCounts(int32_add=(bits + 1) * (dv + 1) - 1)
    per_row = OpCounts(int32_add=bits * (dv + 1) + dv + 1, int32_mul=dv + 1)
    per_out = OpCounts(shifts=2, int64_add=1, int64_div=1)
    return (codes + per_key.times(t) + per_row.times(s) + per_out.times(s * dv)).times(n) + \
        OpCounts(bytes_read=tensor_bytes(input_shapes, input_dtypes),
                 bytes_written=4 * n * s * dv)
