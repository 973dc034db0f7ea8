"""``exp_neg``: a float32 exponential built from correctly rounded operations only.

Definition (float32 throughout; ``fl(.)`` is one float32 rounding, to nearest even):
    t < EXP_MIN (-87)           -> 0.0 exactly (below it the result would leave the normal range)
    t = min(max(t, EXP_MIN), EXP_MAX (88))
    y = fl(t * LOG2E);  k = floor(fl(y + 0.5))                    (an integer, -125 <= k <= 127)
    r = fl(fl(t - fl(k * LN2_HI)) - fl(k * LN2_LO))               (|r| <= ~0.347)
    p = C6;  p = fl(fl(p * r) + C_i) for i = 5, 4, ..., 0         (Horner, C_i = 1/i!)
    result = fl(p * 2**k)                                         (2**k from its bit pattern)
LN2_HI has 15 significant bits, so ``k * LN2_HI`` is exact. The truncated Taylor series leaves
an error below 1.2e-7 relative on |r| <= ln2/2; with the roundings the result is within 4e-7
of exp(t) relative (``tests/test_op_binary_attention.py`` measures it). It is an exponential
on all of [-87, 88] (the name says what the binary attention ops use it for: t <= 0).
"""

from __future__ import annotations

import numpy as np

EXP_MIN = np.float32(-87.0)
"""Below this the result is 0 (the smallest result above it, ~1.6e-38, is still normal)."""
EXP_MAX = np.float32(88.0)
"""Arguments are clamped here (exp(88) ~ 1.65e38 < float32's largest finite)."""
LOG2E = np.float32(1.4426950408889634)
LN2_HI = np.float32(0.693145751953125)           # 0x3F317200
LN2_LO = np.float32(1.4286068203094172e-06)      # ln 2 - LN2_HI, rounded
HALF = np.float32(0.5)
COEFFS = tuple(np.float32(1.0 / f) for f in (1, 1, 2, 6, 24, 120, 720))
"""C_0 .. C_6 = 1/i! as float32."""


def pow2_bits(k: np.ndarray) -> np.ndarray:
    """2**k as float32, from the bit pattern ``(k + 127) << 23`` (integer k in -126..127)."""
    return ((np.asarray(k, np.int32) + 127) << 23).astype(np.int32).view(np.float32)


def exp_neg(t: np.ndarray) -> np.ndarray:
    """The pinned float32 exponential (module docstring) of a float32 array, elementwise."""
    t = np.asarray(t, np.float32)
    tc = np.clip(t, EXP_MIN, EXP_MAX)
    y = tc * LOG2E
    k = np.floor(y + HALF)
    r = (tc - k * LN2_HI) - k * LN2_LO
    p = np.full_like(r, COEFFS[6])
    for c in COEFFS[5::-1]:
        p = p * r + c
    out = p * pow2_bits(np.clip(k, -126, 127).astype(np.int32))
    return np.where(t < EXP_MIN, np.float32(0.0), out).astype(np.float32)
