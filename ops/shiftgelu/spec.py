"""``ShiftGELU``: integer-only GELU, ``GELU(x) ~ x * sigmoid(1.702 * x)`` (I-ViT, per-element form).

Specification (``docs/methods/ivit.md``, "ShiftGELU"):
    input q: int8 or int16 at scale s; compile time: s' = 1.702 * s (float64),
    x0 = floor(-1 / s')  (the negative integer standing for -1),
    n = 23, reduced until |x0| * 2**n * 2 < 2**31 (and recorded).
    Per element, int64 throughout:
        m   = max(q, 0)                        (per element, not the row max)
        e1  = shift_exp(q - m, x0, n)          (Shiftmax steps 2-7; both arguments <= 0,
        e2  = shift_exp(-m, x0, n)              one of them exactly 0, i.e. e**0)
        sig = (((2**31 - 1) // (e1 + e2)) * e1) >> 24     in [0, 127], scale 2**-7
        out = q * sig                          int32 at scale s * 2**-7
The output is followed by a ``Requant`` to int8 in the graph.

Beyond the spec (measured reason): ``params`` tightens the range check to ``< 2**24`` by default
(``sum_bits=24``), so that the reciprocal keeps >= 7 bits. With the spec's ``2**31`` it keeps 1-2
bits for fine scales and int16 inputs at +-16 / +-32 are off by up to 2.0 / 4.0; with 24 bits by
0.125 / 0.25 (``tests/test_op_shiftgelu.py``). The kernels only see ``x0`` and ``n``.

ONNX (domain ``edgert``): ``ShiftGELU(q: int8|int16) -> int32`` with int attributes ``x0``, ``n``.
"""

from __future__ import annotations

import math

import numpy as np

from edgert.ops._intmath.spec import INT31_MAX, shift_exp
from edgert.ops._common.op import Example

OP_TYPE = "ShiftGELU"
DEFAULT_N = 23
SIG_SHIFT = 24          # 31 - 7: sigmoid as a 7-bit fraction
OUT_FRAC_BITS = 7       # output scale = s * 2**-7
SUM_BITS = 31           # overflow bound: |x0| * 2**n * 2 < 2**31 (the spec's check)
DEFAULT_SUM_BITS = 24   # our default check, keeps >= 7 bits in the reciprocal
IN_DTYPES = (np.int8, np.int16)


def params(scale: float, n: int = DEFAULT_N, *, sum_bits: int = DEFAULT_SUM_BITS) -> dict[str, int]:
    """Compile-time constants for an input scale ``s`` (real value = q * s).

    Args:
        scale: input scale s, finite and > 0.
        n: requested shift budget (default 23); lowered until ``|x0| * 2**n * 2 < 2**sum_bits``.
        sum_bits: bound on ``e1 + e2`` (default 24); 31 (the spec) only prevents overflow. The reciprocal
            ``(2**31 - 1) // (e1 + e2)`` then keeps as little as 1-2 bits when ``|x0|`` is large
            (int16 inputs, small int8 ranges) and the sigmoid is off by up to 40/128 (e.g. 112/128
            where it should be 127/128); ``sum_bits=24`` keeps >= 7 bits (errors: see the tests).

    Returns:
        ``{"x0": x0, "n": n_used}`` (plain ints), ready for ``reference(q, **params(s))``.

    Raises:
        ValueError: a scale that is not finite and positive, a negative ``n``, or an ``x0`` so
            large that even ``n = 0`` fails the check (``|x0| * 2 >= 2**sum_bits``).
    """
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"ShiftGELU input scale must be finite and > 0, got {scale}")
    if n < 0:
        raise ValueError(f"ShiftGELU shift budget n must be >= 0, got {n}")
    if not 1 <= sum_bits <= SUM_BITS:
        raise ValueError(f"ShiftGELU sum_bits must be in [1, 31], got {sum_bits}")
    x0 = math.floor(-1.0 / (1.702 * float(scale)))
    n_used = int(n)
    while n_used >= 0 and not fits(x0, n_used, sum_bits):
        n_used -= 1
    if n_used < 0:
        raise ValueError(f"ShiftGELU: x0 = {x0} (scale {scale}) gives |x0| * 2 >= 2**{sum_bits} "
                         "even with n = 0")
    return {"x0": int(x0), "n": n_used}


def fits(x0: int, n: int, sum_bits: int = SUM_BITS) -> bool:
    """Compile-time range check: ``e1 + e2 <= |x0| * 2**(n+1)`` must stay below ``2**sum_bits``."""
    return abs(x0) * 2 ** (n + 1) < 2**sum_bits


def check_input(q: np.ndarray, x0: int, n: int) -> None:
    """Raise on an input dtype or constants the kernels do not take."""
    if q.dtype not in IN_DTYPES:
        raise TypeError(f"ShiftGELU input must be int8 or int16, got {q.dtype}")
    if x0 >= 0 or n < 0 or not fits(x0, n):
        raise ValueError(f"ShiftGELU constants out of range: x0={x0}, n={n} (use params())")


def reference(q: np.ndarray, *, x0: int, n: int) -> np.ndarray:
    """Normative numpy ShiftGELU.

    Args:
        q: int8 or int16 array of any shape, at scale s.
        x0, n: from :func:`params`.

    Returns:
        int32 array of ``q``'s shape, at scale ``s * 2**-7``.
    """
    q = np.asarray(q)
    check_input(q, x0, n)
    q64 = q.astype(np.int64)
    m = np.maximum(q64, 0)
    e1 = shift_exp(q64 - m, x0, n)
    e2 = shift_exp(-m, x0, n)
    sig = ((INT31_MAX // (e1 + e2)) * e1) >> SIG_SHIFT
    return (q64 * sig).astype(np.int32)


def lookup_table(dtype: str, *, x0: int, n: int) -> np.ndarray:
    """ShiftGELU of every value of ``dtype`` (int8: 256 entries, int16: 65536), computed by
    :func:`reference`: int32 [2**bits], entry ``i`` for ``q = i + iinfo(dtype).min``."""
    info = np.iinfo(dtype)
    return reference(np.arange(info.min, info.max + 1, dtype=dtype), x0=x0, n=n)


def to_float(out: np.ndarray, scale: float) -> np.ndarray:
    """The float GELU estimate of an int32 ShiftGELU output: ``out * scale * 2**-7`` (float64)."""
    return np.asarray(out, np.float64) * (float(scale) * 2.0**-OUT_FRAC_BITS)


def example(rng: np.random.Generator) -> Example:
    """int8 [3, 40] at scale 0.05 (GELU's whole curve within +-6.4)."""
    q = rng.integers(-128, 128, (3, 40)).astype(np.int8)
    return Example((q,), params(0.05))
