"""Operations of one ``BinaryAttention`` call, from the spec's arithmetic.

N = batch x heads, S queries, T keys, Dv value columns, b bits. The scores need no multiply:

    s_ij = b - 2 popcount(cq_i xor ck_j)     per score: 1 popcount, 1 shift, 1 int32 add
                                             (the xor is bitwise, not counted)

Quadratic form, per score: the logit ``temperature * s`` (1 fp32 mul) and the bias (1 fp32
add when given), the row maximum (1 compare), ``exp_neg(l - max)`` (1 fp32 add + EXP_NEG),
the sum (1 fp32 add) and per value column ``e * v`` added in (1 fp32 mul, 1 fp32 add); per
query row one reciprocal (counted as an fp32 mul) and Dv fp32 mul.

Linear form, per key: ``exp_neg(bias)`` and ``w * v`` when a bias is given (EXP_NEG, Dv fp32
mul), then b * (Dv + 1) signed additions into ``H^T U`` and the key sums, Dv + 1 additions
into the column sums; per query row b * (Dv + 1) signed additions, 2 scalings by c (Dv + 1
fp32 mul) and additions (Dv + 1), one reciprocal and Dv fp32 mul. The bit tests are bitwise.

Bytes: the codes, V and the optional inputs read once, the float32 output written once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgert.ops._common.op import OpCounts, tensor_bytes
from edgert.ops._floatmath.counts import EXP_NEG

SCORE = OpCounts(popcounts=1, shifts=1, int32_add=1)
"""Operations of one popcount score."""


def counts(input_shapes: Sequence[Sequence[int] | None], input_dtypes: Sequence[Any],
           attrs: Mapping[str, Any]) -> OpCounts:
    """Counts for ``(CodesQ [..., H, S], CodesK [..., H, T], V [..., H, T, Dv], Temperature?,
    Bias?)``."""
    q, v = list(input_shapes[0]), list(input_shapes[2])
    has_bias = len(input_shapes) > 4 and input_shapes[4] is not None
    bits = int(attrs.get("bits", 16))
    form = attrs.get("form", "quadratic")
    form = form.decode() if isinstance(form, bytes) else form
    n = int(np.prod(q[:-1], dtype=np.int64))
    s, t, dv = int(q[-1]), int(v[-2]), int(v[-1])
    io = OpCounts(bytes_read=tensor_bytes(input_shapes, input_dtypes),
                  bytes_written=4 * n * s * dv)
    if form == "quadratic":
        per_score = (SCORE + OpCounts(fp32_mul=1 + dv, fp32_add=2 + dv + int(has_bias),
                                      compares=1) + EXP_NEG)
        per_row = OpCounts(fp32_mul=1 + dv)
        return (per_score.times(s * t) + per_row.times(s)).times(n) + io
    per_key = OpCounts(fp32_add=(bits + 1) * (dv + 1))
    if has_bias:
        per_key = per_key + EXP_NEG + OpCounts(fp32_mul=dv)
    per_row = OpCounts(fp32_add=bits * (dv + 1) + dv + 1, fp32_mul=2 * dv + 2)
    return (per_key.times(t) + per_row.times(s)).times(n) + io
