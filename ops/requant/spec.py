"""``Requant``: dyadic requantization, the only way scales change inside an integer graph.

Specification (``docs/methods/ivit.md``, "Dyadic requantization"):
    ratio r = s_in / s_out (float64, at compile time) = mant * 2**exp, mant in [0.5, 1)
    m = round_half_up(mant * 2**31)  (m <= 2**31),  e = 31 - exp  (1 <= e <= 62 enforced)
    out = clamp((q * m + 2**(e-1)) >> e, lo, hi)   in int64  (round half up)
Per-channel: ``m`` and ``e`` are vectors along ``axis`` (default the last axis).

Beyond the spec: a ratio may be negative (a LayerNorm gamma < 0 folds into it; then
``mant`` in (-1, -0.5] and ``m < 0``, the runtime formula is unchanged) or zero (``m = 0``,
``e = 1``: the output is 0).

ONNX (domain ``edgert``): ``Requant(q: int8|int16|int32, multiplier: int64, shift: int64)
-> int8|int16|int32`` with attributes ``to`` (output TensorProto type), ``lo``, ``hi``
(clamp, inside the range of ``to``) and ``axis`` (the channel axis of per-channel
``multiplier``/``shift``; ignored when they hold one value).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgert.ops._common.op import Example

OP_TYPE = "Requant"
OUT_DTYPES = {"int8": np.int8, "int16": np.int16, "int32": np.int32}


def params(ratio: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Multiplier and shift for ``ratio = s_in / s_out`` (scalar or per-channel).

    Returns:
        ``(m, e)`` int64 arrays of ratio's shape.

    Raises:
        ValueError: a ratio that is not finite, or with ``|ratio| >= 2**30`` (the shift must
            stay in [1, 62] so that int64 holds q*m and the rounding term). Below 2**-32 (a
            LayerNorm gamma that is practically 0) the ratio is 0: for int32 inputs
            ``|q * ratio| < 1/2`` rounds to 0 anyway, so this is exact.
    """
    r = np.asarray(ratio, dtype=np.float64)
    m = np.empty(r.shape, np.int64)
    e = np.empty(r.shape, np.int64)
    for idx, value in np.ndenumerate(r):
        if not math.isfinite(value):
            raise ValueError(f"requantization ratio must be finite, got {value}")
        if abs(value) < 2.0**-32:
            m[idx], e[idx] = 0, 1
            continue
        mant, exp = math.frexp(float(value))
        mult = math.floor(mant * 2.0**31 + 0.5)
        shift = 31 - exp
        if not 1 <= shift <= 62:
            raise ValueError(f"requantization ratio {value}: |ratio| is outside [2**-31, 2**30)")
        m[idx], e[idx] = mult, shift
    return m, e


def narrow(m: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The same Requant with an int32 multiplier, or ``None`` where none exists.

    ``m = 2**31`` (the rounding can reach it) becomes ``(2**30, e - 1)``: for ``e >= 2``,
    ``(q * 2**31 + 2**(e-1)) >> e == (q * 2**30 + 2**(e-2)) >> (e-1)`` exactly. Kernels use
    it because x86 multiplies int32 by int32 into int64 in vector registers (``vpmuldq``) but
    has no vector int64 x int64 multiply before AVX-512.

    Returns:
        ``(m int32, e int64)`` of the input shapes.
    """
    m, e = np.asarray(m, np.int64).copy(), np.asarray(e, np.int64).copy()
    top = m == 2**31
    if (top & (e < 2)).any():
        return None
    m[top], e[top] = 2**30, e[top] - 1
    if (m < -(2**31)).any() or (m >= 2**31).any():
        return None
    return m.astype(np.int32), e


def _channel_shape(ndim: int, size: int, axis: int) -> tuple[int, ...]:
    """Broadcast shape of a per-channel vector of ``size`` along ``axis`` of an ndim tensor."""
    if size == 1:
        return (1,) * max(ndim, 1)
    shape = [1] * ndim
    shape[axis] = size
    return tuple(shape)


def reference(q: np.ndarray, m: np.ndarray, e: np.ndarray, *, lo: int, hi: int,
              to: str = "int8", axis: int = -1) -> np.ndarray:
    """Normative numpy Requant: int64 arithmetic, round half up, clamp, cast to ``to``.

    Args:
        q: int8/int16/int32 tensor at scale s_in.
        m, e: int64, one value or one per channel of ``q``'s ``axis``.
        lo, hi: clamp bounds (inside ``to``'s range).
        to: output dtype name, "int8", "int16" or "int32".
    """
    q = np.asarray(q)
    shape = _channel_shape(q.ndim, np.size(m), axis)
    m = np.asarray(m, np.int64).reshape(shape)
    e = np.asarray(e, np.int64).reshape(shape)
    acc = q.astype(np.int64) * m + (np.int64(1) << (e - 1))
    return np.clip(acc >> e, lo, hi).astype(OUT_DTYPES[to])


def example(rng: np.random.Generator) -> Example:
    """int32 [2, 5, 4] requantized per channel of axis 1 (ratios of both signs) to int8."""
    ratio = rng.uniform(1e-3, 0.1, 5) * rng.choice([-1.0, 1.0], 5)
    m, e = params(ratio)
    q = rng.integers(-(2**12), 2**12, (2, 5, 4)).astype(np.int32)
    return Example((q, m, e), {"to": 3, "lo": -128, "hi": 127, "axis": 1})   # 3: TensorProto.INT8
