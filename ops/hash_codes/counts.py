"""Operations of one ``HashCodes`` call, from the spec's arithmetic.

Per vector of D floats, with m anchors and b bits (divisions and the square root are counted
as fp32 multiplies: ``OpCounts`` has no float division)::

    n2 = sum x_d * x_d                 D fp32 mul, D fp32 add
    sqrt, select 1 for 0               1 fp32 mul, 1 compare
    xh_d = x_d / nrm                   D fp32 mul
    dist_j = sum (xh_d - a_jd)**2      m * D * (2 fp32 add, 1 fp32 mul)
    f_j = exp_neg(-dist_j * gamma)     m * (1 fp32 mul + EXP_NEG)
    c_j = f_j - mean_j                 m fp32 add
    p_i = sum_j A_ij * c_j             b * m * (1 fp32 mul, 1 fp32 add)
    bit i = p_i >= 0, packed           b compares, b shifts (the or-ing is bitwise)

Bytes: X and the parameters read once, one code word written per vector.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgert.ops._common.op import OpCounts, tensor_bytes
from edgert.ops._floatmath.counts import EXP_NEG


def counts(input_shapes: Sequence[Sequence[int] | None], input_dtypes: Sequence[Any],
           attrs: Mapping[str, Any]) -> OpCounts:
    """Counts for ``(X [..., H, S, D], Anchors [Hp, m, D], Gamma, Mean, Proj [Hp, b, m])``."""
    x_shape, a_shape = list(input_shapes[0]), list(input_shapes[1])
    bits = int(attrs.get("bits", 16))
    vectors = int(np.prod(x_shape[:-1], dtype=np.int64))
    dim, m = int(x_shape[-1]), int(a_shape[1])
    per = (OpCounts(fp32_mul=2 * dim + 1, fp32_add=dim, compares=1)
           + OpCounts(fp32_add=2, fp32_mul=1).times(m * dim)
           + (OpCounts(fp32_mul=1, fp32_add=1) + EXP_NEG).times(m)
           + OpCounts(fp32_mul=1, fp32_add=1).times(bits * m)
           + OpCounts(compares=bits, shifts=bits))
    return per.times(vectors) + OpCounts(bytes_read=tensor_bytes(input_shapes, input_dtypes),
                                         bytes_written=vectors * bits // 8)
