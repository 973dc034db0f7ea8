"""``ShiftMatMul``: integer matrix product whose weights are signed powers of two, so that each
product is a shift (ShiftAddViT's shift linears, ``docs/methods/shift-linear.md``).

Weight codes (int8, one per weight, ``c`` in ``-MAX_CODE..MAX_CODE``, ``MAX_CODE = 8``):
    c = 0            weight 0
    c = +e+1         weight +2^e        e = 0..7 (1, 2, 4, ..., 128)
    c = -(e+1)       weight -2^e
The zero weight needs its own code because no power of two is 0; ``|c| - 1`` is the shift.

Specification (``A`` int8 or int16 [..., M, K], ``W`` int8 codes [K, N]):
    shift(x, c) = 0 if c = 0;  (x << (|c| - 1)) if c > 0;  -(x << (|c| - 1)) if c < 0
    out[..., m, n] = sum_k shift(a[..., m, k], W[k, n])       exact (int64), stored as int32
``x << e`` is ``x * 2^e`` (two's complement, exact: |x| <= 2^15, e <= 7). Precondition, proven
at compile time (:func:`accumulator_bound`): every partial sum fits int32, so kernels may
accumulate in int32, in any order, and stay bit-identical with the int64 reference (integer
addition is associative; nothing rounds). The reference checks the final values at run time and
raises on overflow.

The weight is a constant (a Linear's weight) and has rank 2; ``A``'s leading dims are batch
dims. Its integer scale (the per-column weight scale of the int8 Linear it replaces) lives in
the ``Requant`` after the accumulator, as for ``IntMatMul``: the codes approximate the int8
weights ``q`` (:func:`power_of_two_codes`), in the same units.

ONNX (domain ``edgert``): ``ShiftMatMul(A: int8|int16 [..., M, K], W: int8 [K, N]) -> int32
[..., M, N]``, no attributes.
"""

from __future__ import annotations

import numpy as np

from edgert.ops._common.op import Example

OP_TYPE = "ShiftMatMul"
A_DTYPES = (np.int8, np.int16)
MAX_SHIFT = 7
"""Largest shift: weights up to 2^7 = 128, one step above the int8 weights' 127."""
MAX_CODE = MAX_SHIFT + 1
INT32_MAX = (1 << 31) - 1


def power_of_two_codes(v: np.ndarray) -> np.ndarray:
    """Round values (integer int8 weights, or floats in the same units) to the nearest signed
    power of two ``2^e``, ``e`` in 0..:data:`MAX_SHIFT`; returns the int8 codes.

    Nearest in value (the least absolute error per weight): with ``|v| = f * 2^x``, ``f`` in
    [0.5, 1) (``frexp``), the candidates are ``2^(x-1)`` and ``2^x``, and the larger is taken
    when ``f > 0.75`` (``|v|`` above their midpoint ``1.5 * 2^(x-1)``); a tie (|v| = 3, 6, 12,
    24, 48, 96) goes to the smaller. ``|v| <= 0.5`` gives code 0 (weight 0); magnitudes above
    ``2^MAX_SHIFT`` are clipped to it.
    """
    a = np.abs(np.asarray(v, np.float64))
    f, x = np.frexp(a)
    e = np.where(f > 0.75, x, x - 1)                     # |v| -> 2^e
    e = np.clip(e, 0, MAX_SHIFT)
    codes = np.where(a <= 0.5, 0, (e + 1) * np.where(np.asarray(v) < 0, -1, 1))
    return codes.astype(np.int8)


def code_weights(codes: np.ndarray) -> np.ndarray:
    """The weights the codes stand for: int64 ``sign(c) * 2^(|c| - 1)``, 0 for ``c = 0``."""
    c = np.asarray(codes).astype(np.int64)
    mag = np.where(c == 0, 0, np.left_shift(1, np.maximum(np.abs(c) - 1, 0)))
    return np.sign(c) * mag


def accumulator_bound(a_max: int, codes: np.ndarray, bias: np.ndarray | None = None) -> int:
    """Largest possible ``|sum_k shift(a[k], W[k, n]) + bias[n]|`` for ``|a| <= a_max`` (int).

    Args:
        a_max: bound on the absolute value of the activations (127 for int8, 32767 for int16).
        codes: int8 weight codes [K, N].
        bias: optional integer bias [N] added to the accumulator after the product.
    """
    col = np.abs(code_weights(codes)).sum(axis=-2)
    extra = 0 if bias is None else np.abs(np.asarray(bias, np.int64))
    return int((a_max * col + extra).max()) if col.size else 0


def check_operands(a: np.ndarray, w: np.ndarray) -> None:
    """Raise on operand dtypes, shapes or codes the kernels do not take."""
    if a.dtype not in A_DTYPES:
        raise TypeError(f"ShiftMatMul input A must be int8 or int16, got {a.dtype}")
    if w.dtype != np.int8:
        raise TypeError(f"ShiftMatMul weight codes must be int8, got {w.dtype}")
    if a.ndim < 2 or w.ndim != 2:
        raise ValueError(f"ShiftMatMul needs A of rank >= 2 and W of rank 2, got {a.shape} "
                         f"and {w.shape}")
    if a.shape[-1] != w.shape[0]:
        raise ValueError(f"ShiftMatMul: inner dimensions differ, {a.shape} @ {w.shape}")
    if w.size and int(np.abs(w.astype(np.int16)).max()) > MAX_CODE:
        raise ValueError(f"ShiftMatMul weight codes must lie in -{MAX_CODE}..{MAX_CODE}")


def reference(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Normative numpy ShiftMatMul.

    Args:
        a: int8 or int16 [..., M, K].
        w: int8 weight codes [K, N] (module docstring).

    Returns:
        int32 [..., M, N]: the sum of the shifted activations (raises OverflowError when a
        value does not fit int32: the compile-time bound failed).
    """
    a, w = np.asarray(a), np.asarray(w)
    check_operands(a, w)
    x = a.astype(np.int64)
    c = w.astype(np.int64)
    shift = np.maximum(np.abs(c) - 1, 0)
    out = np.zeros((*a.shape[:-1], w.shape[1]), np.int64)
    for k in range(w.shape[0]):
        p = np.left_shift(x[..., k, None], shift[k])                  # x << e, exact
        out += np.where(c[k] > 0, p, np.where(c[k] < 0, -p, 0))
    if out.size and np.abs(out).max() > INT32_MAX:
        raise OverflowError("ShiftMatMul: accumulator exceeds int32 (the compile-time bound "
                            "failed)")
    return out.astype(np.int32)


def example(rng: np.random.Generator) -> Example:
    """int16 [2, 5, 24] @ codes [24, 7] (every code, zeros included): 24 * 2^12 * 2^7 < 2^31."""
    a = rng.integers(-(2**12), 2**12, (2, 5, 24)).astype(np.int16)
    w = rng.integers(-MAX_CODE, MAX_CODE + 1, (24, 7)).astype(np.int8)
    return Example((a, w), {})
