"""``IntMatMul``: integer matrix product with int32 accumulators (int8/int16 operands).

Specification (``docs/methods/ivit.md``, "Tensors"; numpy ``matmul`` semantics):
    out[..., m, n] = sum_k a[..., m, k] * b[..., k, n]      exact (int64), stored as int32
Precondition, proven at compile time by the quantizer (:func:`accumulator_bound`): every
partial sum fits int32, so kernels may accumulate in int32 and stay bit-identical with the
int64 reference (a partial sum is bounded by ``sum_k |a| * |b|``, which the bound covers).
The reference checks the final values at run time and raises on overflow.

ONNX: the int8 x int8 case is written as the standard ``MatMulInteger`` (no zero points);
mixed or int16 operands, which ``MatMulInteger`` does not allow, as
``edgert.IntMatMul(A: int8|int16, B: int8|int16) -> int32``. Both run on these kernels.
"""

from __future__ import annotations

import numpy as np

from edgert.ops._common.op import Example

OP_TYPE = "IntMatMul"
IN_DTYPES = (np.int8, np.int16)
INT32_MAX = (1 << 31) - 1


def accumulator_bound(a_max: int, b: np.ndarray, bias: np.ndarray | None = None) -> int:
    """Largest possible ``|sum_k a[k] * b[k, n] + bias[n]|`` for ``|a| <= a_max`` (a Python int).

    Args:
        a_max: bound on the absolute value of the activations (e.g. 127 or 32767).
        b: integer weights [K, N] (or [..., K, N]; the max is over every column).
        bias: optional integer bias [N] added to the accumulator.
    """
    col = np.abs(np.asarray(b, np.int64)).sum(axis=-2)
    if bias is not None:
        return int((a_max * col + np.abs(np.asarray(bias, np.int64))).max())
    return int(a_max * col.max())


def check_operands(a: np.ndarray, b: np.ndarray) -> None:
    """Raise on operand dtypes or shapes the kernels do not take."""
    if a.dtype not in IN_DTYPES or b.dtype not in IN_DTYPES:
        raise TypeError(f"IntMatMul operands must be int8 or int16, got {a.dtype} and {b.dtype}")
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"IntMatMul needs operands of rank >= 2, got {a.shape} and {b.shape}")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"IntMatMul: inner dimensions differ, {a.shape} @ {b.shape}")


def reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Normative numpy IntMatMul: exact int64 product, int32 result (raises on overflow)."""
    a, b = np.asarray(a), np.asarray(b)
    check_operands(a, b)
    out = np.matmul(a.astype(np.int64), b.astype(np.int64))
    if out.size and np.abs(out).max() > INT32_MAX:
        raise OverflowError("IntMatMul: accumulator exceeds int32 (the compile-time bound failed)")
    return out.astype(np.int32)


def example(rng: np.random.Generator) -> Example:
    """int16 [2, 5, 24] @ int8 [24, 7]: within the int32 bound (24 * 2**12 * 127 < 2**31)."""
    a = rng.integers(-(2**12), 2**12, (2, 5, 24)).astype(np.int16)
    b = rng.integers(-127, 128, (24, 7)).astype(np.int8)
    return Example((a, b), {})
