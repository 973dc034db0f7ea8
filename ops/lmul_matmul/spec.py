"""``LMulMatMul``: float32 matrix product whose every product is an L-Mul (an integer addition).

L-Mul ("Addition is All You Need for Energy-efficient Language Models", 2024) approximates
``x * y = (1 + mx)(1 + my) 2^(ex + ey)`` by ``(1 + mx + my + 2^-l) 2^(ex + ey)``: the cross
term ``mx * my`` is replaced by a constant, so the product needs no multiplier
(``docs/methods/lmul.md``).

Specification (one product, float32 operands, ``m = mantissa_bits`` in 2..5):
    l(m)   = m for m <= 3, 3 for m = 4, 4 for m = 5
    C      = 0x3F800000 - (1 << (23 - l))        the exponent bias minus the 2^-l offset
    |x|, |y| as IEEE float32 bit patterns (sign bit cleared), each mantissa cut to its top m
    bits (truncated, not rounded: the 2^-l offset assumes truncation);
    s      = |x|bits + |y|bits - C               (exact integer)
    result = sign(x) xor sign(y), with the magnitude bits
             0            if s < 0x00800000        (below the smallest normal: flush to 0)
             0x7F7FFFFF   if s > 0x7F7FFFFF        (exponent overflow: largest finite float)
             s            otherwise
Special operands, decided before the sum: a denormal operand reads as 0 (like zero); then
IEEE multiplication's rules: NaN in either operand, or Inf times 0, gives NaN (0x7FC00000);
Inf times a finite non-zero value gives Inf with the xor'ed sign; 0 times a finite value gives
0 with the xor'ed sign.

The bit-level form is the semantics, and it differs from the formula above where
``mx + my + 2^-l >= 1``: the integer sum carries that overflow of the mantissa field into the
exponent, giving ``(mx + my + 2^-l) * 2^(ex + ey + 1)`` where the formula read literally gives
``(1 + mx + my + 2^-l) * 2^(ex + ey)``. The carry is what an adder does, and it is the more
accurate of the two (``study.py`` measures both: about 3% against 6% mean relative error).

Matrix product (numpy ``matmul`` shapes, ranks >= 2, batch dims broadcast):
    out[..., i, j] = (((0 + p_0) + p_1) + ... + p_{K-1}),  p_k = lmul(a[..., i, k], b[..., k, j])
every addition a float32 addition (round to nearest even), in ascending ``k``. The order is
fixed so that this spec, the numba kernel and the TVM kernel (on every target) give the same
bits: nothing may reassociate the sum or accumulate in a wider type. (The paper accumulates
in higher precision than the operands; here the products have at most 6 significant bits and
the float32 accumulator has 24.) NaN results compare as NaN: the payload of a NaN produced
by the sum (Inf - Inf) is the CPU's default NaN, which differs between x86 and aarch64.

ONNX (domain ``edgert``): ``LMulMatMul(A: float32 [..., M, K], B: float32 [..., K, N]) ->
float32 [..., M, N]`` with the int attribute ``mantissa_bits`` (2..5).
"""

from __future__ import annotations

import numpy as np

from edgert.ops._common.op import Example

OP_TYPE = "LMulMatMul"
MANTISSA_BITS = (2, 3, 4, 5)
"""The mantissa widths the op takes (the paper's range)."""
DEFAULT_MANTISSA_BITS = 4
"""4 bits: as accurate as float8_e4m3 products (measured in ``tests/test_op_lmul_matmul.py``)."""

BIAS = 0x3F800000            # float32 exponent bias (127) at the exponent field
SIGN = 0x80000000
MAGNITUDE = 0x7FFFFFFF
INF = 0x7F800000
NAN = 0x7FC00000             # the canonical quiet NaN
MIN_NORMAL = 0x00800000
MAX_FINITE = 0x7F7FFFFF
FRACTION_BITS = 23


def offset_bits(mantissa_bits: int) -> int:
    """``l(m)``: the offset term is ``2^-l``; m for m <= 3, 3 for m = 4, 4 above (the paper's
    choice; the float32 case, m = 23, also uses 4)."""
    m = int(mantissa_bits)
    return m if m <= 3 else (3 if m == 4 else 4)


def truncation_mask(mantissa_bits: int) -> int:
    """Bits of a float32 magnitude kept when its mantissa is cut to ``mantissa_bits`` bits."""
    return MAGNITUDE & ~((1 << (FRACTION_BITS - int(mantissa_bits))) - 1)


def constant(mantissa_bits: int) -> int:
    """``C = BIAS - 2^(23 - l)``: subtracted from the sum of the two magnitudes (0x3F780000 for
    l = 4, 0x3F700000 for l = 3)."""
    return BIAS - (1 << (FRACTION_BITS - offset_bits(mantissa_bits)))


def check_mantissa_bits(mantissa_bits: int, allowed: tuple[int, ...] = MANTISSA_BITS) -> int:
    """``mantissa_bits`` as an int; ValueError outside ``allowed``."""
    m = int(mantissa_bits)
    if m not in allowed:
        raise ValueError(f"LMulMatMul mantissa_bits must be one of {list(allowed)}, got {m}")
    return m


def lmul_bits(xb: np.ndarray, yb: np.ndarray, mantissa_bits: int) -> np.ndarray:
    """L-Mul on float32 bit patterns (any integer arrays holding uint32 values, broadcast):
    the result's bit pattern as uint32. ``mantissa_bits`` 1..23 (the op takes 2..5; the error
    study also runs 23, the full float32 mantissa)."""
    xb = np.asarray(xb).astype(np.int64) & 0xFFFFFFFF
    yb = np.asarray(yb).astype(np.int64) & 0xFFFFFFFF
    mask = truncation_mask(mantissa_bits)
    ax, ay = xb & MAGNITUDE, yb & MAGNITUDE
    s = (ax & mask) + (ay & mask) - constant(mantissa_bits)
    mag = np.where(s < MIN_NORMAL, 0, np.minimum(s, MAX_FINITE))
    x_zero, y_zero = ax < MIN_NORMAL, ay < MIN_NORMAL           # zero or denormal
    x_inf, y_inf = ax == INF, ay == INF
    mag = np.where(x_zero | y_zero, 0, mag)
    mag = np.where(x_inf | y_inf, INF, mag)
    nan = (ax > INF) | (ay > INF) | ((x_inf | y_inf) & (x_zero | y_zero))
    out = np.where(nan, NAN, ((xb ^ yb) & SIGN) | mag)
    return out.astype(np.uint32)


def lmul(x: np.ndarray, y: np.ndarray, mantissa_bits: int) -> np.ndarray:
    """L-Mul of float32 arrays (broadcast): float32 (see the module docstring)."""
    xb = np.asarray(x, np.float32).view(np.uint32)
    yb = np.asarray(y, np.float32).view(np.uint32)
    return lmul_bits(xb, yb, mantissa_bits).view(np.float32)


def check_operands(a: np.ndarray, b: np.ndarray) -> None:
    """Raise on operand dtypes or shapes the kernels do not take."""
    if a.dtype != np.float32 or b.dtype != np.float32:
        raise TypeError(f"LMulMatMul operands must be float32, got {a.dtype} and {b.dtype}")
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"LMulMatMul needs operands of rank >= 2, got {a.shape} and {b.shape}")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"LMulMatMul: inner dimensions differ, {a.shape} @ {b.shape}")
    np.broadcast_shapes(a.shape[:-2], b.shape[:-2])     # ValueError when they do not broadcast


def reference(a: np.ndarray, b: np.ndarray, *, mantissa_bits: int) -> np.ndarray:
    """Normative numpy LMulMatMul.

    Args:
        a: float32 [..., M, K].
        b: float32 [..., K, N] (batch dims broadcast against ``a``'s).
        mantissa_bits: 2..5.

    Returns:
        float32 [broadcast batch..., M, N]: L-Mul products summed in float32, ascending k.
    """
    a, b = np.asarray(a), np.asarray(b)
    check_operands(a, b)
    m = check_mantissa_bits(mantissa_bits)
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    acc = np.zeros((*batch, a.shape[-2], b.shape[-1]), np.float32)
    ab, bb = a.view(np.uint32), b.view(np.uint32)
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(a.shape[-1]):
            p = lmul_bits(ab[..., :, k, None], bb[..., None, k, :], m).view(np.float32)
            acc = acc + p                                 # float32 + float32 -> float32
    return acc


def example(rng: np.random.Generator) -> Example:
    """float32 [2, 5, 24] @ [24, 7], standard normal, mantissa_bits 4."""
    a = rng.standard_normal((2, 5, 24)).astype(np.float32)
    b = rng.standard_normal((24, 7)).astype(np.float32)
    return Example((a, b), {"mantissa_bits": DEFAULT_MANTISSA_BITS})
