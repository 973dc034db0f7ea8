"""``Requant``: dyadic requantization, the only way scales change inside an integer graph.

Specification (``shared/reference/ivit.md``, "Dyadic requantization"):
    ratio r = s_in / s_out (float64, at compile time) = mant * 2**exp, mant in [0.5, 1)
    m = round_half_up(mant * 2**31)  (m <= 2**31),  e = 31 - exp  (1 <= e <= 62 enforced)
    out = clamp((q * m + 2**(e-1)) >> e, lo, hi)   in int64  (round half up)
Per-channel: ``m`` and ``e`` are vectors over the last axis.

ONNX (domain ``edgert``): ``Requant(q: int8|int16|int32, multiplier: int64, shift: int64)
-> int8|int16|int32`` with attributes ``to`` (output TensorProto type), ``lo``, ``hi``.
``multiplier``/``shift`` are scalars or 1-D over the last axis of ``q``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit, prange

OP_TYPE = "Requant"
OUT_DTYPES = {"int8": np.int8, "int16": np.int16, "int32": np.int32}


def params(ratio: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Multiplier and shift for ``ratio = s_in / s_out`` (scalar or per-channel).

    Returns:
        ``(m, e)`` int64 arrays of ratio's shape.

    Raises:
        ValueError: a ratio that is not finite and positive, or outside [2**-31, 2**30)
            (the shift must stay in [1, 62] so that int64 holds q*m and the rounding term).
    """
    r = np.asarray(ratio, dtype=np.float64)
    m = np.empty(r.shape, np.int64)
    e = np.empty(r.shape, np.int64)
    for idx, value in np.ndenumerate(r):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"requantization ratio must be finite and > 0, got {value}")
        mant, exp = math.frexp(float(value))
        mult = math.floor(mant * 2.0**31 + 0.5)
        shift = 31 - exp
        if not 1 <= shift <= 62:
            raise ValueError(f"requantization ratio {value} is outside [2**-31, 2**30)")
        m[idx], e[idx] = mult, shift
    return m, e


def reference(q: np.ndarray, m: np.ndarray, e: np.ndarray, *, lo: int, hi: int,
              out_dtype: str = "int8") -> np.ndarray:
    """Normative numpy Requant: int64 arithmetic, round half up, clamp, cast to ``out_dtype``."""
    m = np.asarray(m, np.int64)
    e = np.asarray(e, np.int64)
    acc = q.astype(np.int64) * m + (np.int64(1) << (e - 1))
    return np.clip(acc >> e, lo, hi).astype(OUT_DTYPES[out_dtype])


@njit(cache=True, parallel=True)
def _requant_nb(q2d, m, e, lo, hi, out2d):
    rows, cols = q2d.shape
    per_channel = m.size > 1
    for r in prange(rows):
        for c in range(cols):
            mm = m[c] if per_channel else m[0]
            ee = e[c] if per_channel else e[0]
            v = (np.int64(q2d[r, c]) * mm + (np.int64(1) << (ee - 1))) >> ee
            out2d[r, c] = min(max(v, lo), hi)


def numba_kernel(q: np.ndarray, m: np.ndarray, e: np.ndarray, *, lo: int, hi: int,
                 out_dtype: str = "int8") -> np.ndarray:
    """numba twin of :func:`reference` (bit-identical)."""
    m = np.ascontiguousarray(np.asarray(m, np.int64).reshape(-1))
    e = np.ascontiguousarray(np.asarray(e, np.int64).reshape(-1))
    q2d = np.ascontiguousarray(q).reshape(-1, q.shape[-1] if q.ndim else 1)
    out = np.empty(q2d.shape, OUT_DTYPES[out_dtype])
    _requant_nb(q2d, m, e, np.int64(lo), np.int64(hi), out)
    return out.reshape(q.shape)


def te_compute(q: Any, m: Any, e: Any, *, lo: int, hi: int, out_dtype: str = "int8") -> Any:
    """TVM TE compute: ``q`` of any rank, ``m``/``e`` int64 tensors of shape [1] or [C]."""
    from tvm import te, tirx

    per_channel = int(m.shape[0]) != 1

    def body(*idx):
        c = idx[-1] if per_channel else 0
        acc = q(*idx).astype("int64") * m[c] + tirx.shift_left(tirx.const(1, "int64"), e[c] - 1)
        v = tirx.shift_right(acc, e[c])
        return tirx.max(tirx.min(v, tirx.const(hi, "int64")), tirx.const(lo, "int64")).astype(out_dtype)

    return te.compute(q.shape, body, name="requant")


def schema() -> object:
    """ONNX schema of ``edgert.Requant``."""
    from edgert.ops import make_schema

    return make_schema(
        OP_TYPE, __doc__ or "",
        inputs=[("q", "T", "integer tensor at scale s_in"),
                ("multiplier", "tensor(int64)", "m, scalar or one per channel of the last axis"),
                ("shift", "tensor(int64)", "e in [1, 62], same shape as multiplier")],
        outputs=[("out", "U", "integer tensor at scale s_out")],
        type_constraints=[("T", ["tensor(int8)", "tensor(int16)", "tensor(int32)"], "input"),
                          ("U", ["tensor(int8)", "tensor(int16)", "tensor(int32)"], "output")],
        attributes=[("lo", "INT", "lower clamp"), ("hi", "INT", "upper clamp")],
    )
