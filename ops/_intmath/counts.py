"""Operation counts of the shared primitives, for the ops' ``counts.py``.

``shift_exp`` per element (:func:`edgert.ops._intmath.spec.shift_exp`)::

    x + (x >> 1) - (x >> 4)        2 shifts, 2 int64 adds
    max(x, n * x0)                 1 compare      (n * x0 is a constant)
    qi = x // x0                   1 int64 division
    rem = x - qi * x0              1 int64 multiply, 1 int64 add
    e = (rem >> 1) - x0            1 shift, 1 int64 add
    e << (n - qi)                  1 int64 add, 1 shift

``isqrt`` per value (:func:`edgert.ops._intmath.spec.isqrt`): the bit length (1 popcount-class
count-leading-zeros), the start ``1 << ceil(bits / 2)`` (1 add, 2 shifts), then per Newton step
``z = (y + v // y) >> 1`` and ``z >= y``: 1 division, 1 add, 1 shift, 1 compare. The steps
stop when ``z`` no longer decreases;
:data:`~edgert.ops._intmath.spec.ISQRT_STEPS` (7, the TE kernel's fixed count) bounds them for
every int64 value, so the count below is that upper bound.
"""

from __future__ import annotations

from edgert.ops._intmath.spec import ISQRT_STEPS
from edgert.ops._common.op import OpCounts

SHIFT_EXP = OpCounts(shifts=4, int64_add=5, int64_mul=1, int64_div=1, compares=1)
"""Operations of one ``shift_exp``."""

ISQRT = (OpCounts(popcounts=1, int64_add=1, shifts=2)
         + OpCounts(int64_div=1, int64_add=1, shifts=1, compares=1).times(ISQRT_STEPS))
"""Operations of one ``isqrt`` (upper bound)."""
