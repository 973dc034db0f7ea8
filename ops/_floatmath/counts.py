"""Operation counts of the pinned float32 primitives, for the ops' ``counts.py``.

``exp_neg`` per element (:func:`edgert.ops._floatmath.spec.exp_neg`)::

    clamp to [EXP_MIN, EXP_MAX], select 0 below   3 compares
    y = t * LOG2E;  k = floor(y + 0.5)           1 fp32 mul, 1 fp32 add (floor: 1 compare)
    r = (t - k * LN2_HI) - k * LN2_LO            2 fp32 mul, 2 fp32 add
    Horner, degree 6                             6 fp32 mul, 6 fp32 add
    2**k from its bits: (k + 127) << 23          1 int32 add, 1 shift
    p * 2**k                                     1 fp32 mul
"""

from __future__ import annotations

from edgert.ops._common.op import OpCounts

EXP_NEG = OpCounts(fp32_mul=10, fp32_add=9, int32_add=1, shifts=1, compares=4)
"""Operations of one ``exp_neg``."""
