"""``Shiftmax``: integer softmax over the last axis (I-ViT, with our pinned choices).

Specification (``shared/reference/ivit.md``, "Shiftmax"); input int8 ``q`` at scale ``s``,
output k-bit probabilities at scale ``2**-(k-1)``:
    x  = q - max_row(q)                                  (x <= 0)
    e  = shift_exp(x, x0, n)                             (steps 2-7; ~ exp(x*s)*|x0|*2**n)
    S  = sum_row(e)
    f  = (2**31 - 1) // S;  sh = 31 - (k - 1)
    out = min((e*f + 2**(sh-1)) >> sh, 2**(k-1) - 1)     (round half up)
``x0 = floor(-1/s)``, ``n = 15`` by default, ``k = 16`` by default (k = 8 is I-ViT's).

Optional ``exclude`` (ours, for attention masks): an integer or bool tensor broadcastable to
``q``; where it is nonzero the element is left out of the row (not in ``max_row`` or ``S``) and
its probability is 0. It stands for the fp32 graph's ``scores + (1 - mask) * -10000`` (or
``* finfo.min``), whose exponentials underflow to exactly 0 in fp32 too. A row with every
element excluded gives all zeros (fp32 would give a uniform row; no pooled output reads it).

The final ``min`` is ours: when one element holds (almost) all the mass, ``e*f`` comes within
``2**(sh-1)`` of ``2**31`` and the rounded value is ``2**(k-1)``, one past the largest signed
k-bit value (it would wrap to -128 / -32768). Clamping costs at most one unit of 2**-(k-1).

Range check (compile time): ``L * |x0| * 2**n < 2**31`` for row length L, so S fits int32.

ONNX (domain ``edgert``): ``Shiftmax(q: int8|int16, exclude?) -> int8 (k=8) | int16 (k=16)``,
attributes ``x0``, ``n``, ``k``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit, prange

from edgert.ops._intmath import INT31_MAX, shift_exp, shift_exp_nb

OP_TYPE = "Shiftmax"


def out_dtype(k: int) -> str:
    """Output dtype for k-bit probabilities."""
    if k <= 8:
        return "int8"
    if k <= 16:
        return "int16"
    raise ValueError(f"Shiftmax output bits k must be <= 16, got {k}")


def params(scale: float, row_len: int, *, k: int = 16, n: int = 15) -> dict[str, int]:
    """Choose ``x0`` and check the shift budget for rows of ``row_len`` elements.

    ``n`` is lowered until ``row_len * |x0| * 2**n < 2**31`` holds (values below
    ``-n`` in the exponent then clamp). Raises ``ValueError`` when even ``n = 1`` fails:
    the input scale is too fine for that row length; the quantizer must pick a coarser one.
    """
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"Shiftmax input scale must be finite and > 0, got {scale}")
    out_dtype(k)
    x0 = math.floor(-1.0 / scale)
    while n >= 1 and row_len * abs(x0) * 2**n >= 2**31:
        n -= 1
    if n < 1:
        raise ValueError(
            f"Shiftmax: rows of {row_len} with input scale {scale} overflow int32 "
            f"(|x0| = {abs(x0)}); use a coarser input scale"
        )
    return {"x0": x0, "n": n, "k": k}


def _keep(q: np.ndarray, exclude: np.ndarray | None) -> np.ndarray:
    """bool mask of the elements that take part, broadcast to ``q``'s shape."""
    if exclude is None:
        return np.ones(q.shape, bool)
    return np.broadcast_to(np.asarray(exclude) == 0, q.shape)


def reference(q: np.ndarray, exclude: np.ndarray | None = None, *, x0: int, n: int,
              k: int = 16) -> np.ndarray:
    """Normative numpy Shiftmax over the last axis; int64 intermediates."""
    q = q.astype(np.int64)
    keep = _keep(q, exclude)
    mx = np.where(keep, q, np.iinfo(np.int64).min).max(axis=-1, keepdims=True)
    x = np.where(keep, q - np.where(keep.any(axis=-1, keepdims=True), mx, 0), 0)
    e = np.where(keep, shift_exp(x, x0, n), 0)
    s = np.maximum(e.sum(axis=-1, keepdims=True), 1)
    f = INT31_MAX // s
    sh = 31 - (k - 1)
    out = np.minimum((e * f + (1 << (sh - 1))) >> sh, (1 << (k - 1)) - 1)
    return out.astype(out_dtype(k))


@njit(cache=True, parallel=True)
def _shiftmax_nb(q2d, keep2d, x0, n, k, out2d):
    rows, cols = q2d.shape
    sh = 31 - (k - 1)
    top = (np.int64(1) << (k - 1)) - 1
    for r in prange(rows):
        e = np.zeros(cols, np.int64)
        mx = np.iinfo(np.int64).min
        for c in range(cols):
            if keep2d[r, c]:
                mx = max(mx, np.int64(q2d[r, c]))
        s = np.int64(0)
        for c in range(cols):
            if keep2d[r, c]:
                e[c] = shift_exp_nb(np.int64(q2d[r, c]) - mx, x0, n)
                s += e[c]
        f = np.int64(2147483647) // max(s, np.int64(1))
        for c in range(cols):
            out2d[r, c] = min((e[c] * f + (np.int64(1) << (sh - 1))) >> sh, top)


def numba_kernel(q: np.ndarray, exclude: np.ndarray | None = None, *, x0: int, n: int,
                 k: int = 16) -> np.ndarray:
    """numba twin of :func:`reference` (bit-identical)."""
    q2d = np.ascontiguousarray(q).reshape(-1, q.shape[-1])
    keep2d = np.ascontiguousarray(_keep(q, exclude)).reshape(q2d.shape)
    out = np.empty(q2d.shape, out_dtype(k))
    _shiftmax_nb(q2d, keep2d, np.int64(x0), np.int64(n), np.int64(k), out)
    return out.reshape(q.shape)


def te_shift_exp(x: Any, x0: int, n: int) -> Any:
    """TIR expression twin of :func:`~edgert.ops._intmath.shift_exp` (x: int64 expr <= 0)."""
    from tvm import tirx

    c = lambda v: tirx.const(v, "int64")  # noqa: E731
    x = x + tirx.shift_right(x, c(1)) - tirx.shift_right(x, c(4))
    x = tirx.max(x, c(n * x0))
    qi = tirx.floordiv(x, c(x0))
    rem = x - qi * c(x0)
    e = tirx.shift_right(rem, c(1)) - c(x0)
    return tirx.shift_left(e, c(n) - qi)


def _te_keep(q: Any, exclude: Any | None) -> Any:
    """TIR predicate: element ``i`` of ``q`` takes part (``exclude`` broadcast numpy-style)."""
    from tvm import tirx

    if exclude is None:
        return lambda *i: tirx.const(True, "bool")
    offset = len(q.shape) - len(exclude.shape)

    def keep(*i):
        idx = [0 if isinstance(d, tirx.IntImm) and d.value == 1 else i[offset + j]
               for j, d in enumerate(exclude.shape)]
        v = exclude(*idx)
        return tirx.Not(v) if exclude.dtype == "bool" else v == tirx.const(0, exclude.dtype)
    return keep


def exp_table(dtype: str, *, x0: int, n: int) -> np.ndarray:
    """``shift_exp(x, x0, n)`` for every ``x = q - max_row(q)`` an input of ``dtype`` can give:
    int32 [2**bits], entry ``j`` for ``x = j - (2**bits - 1)`` (so the last entry is x = 0)."""
    size = 1 << (8 * np.dtype(dtype).itemsize)
    e = shift_exp(np.arange(-(size - 1), 1, dtype=np.int64), x0, n)
    if e.max() >= 2**31:
        raise ValueError(f"Shiftmax constants out of range: x0={x0}, n={n} (use params())")
    return e.astype(np.int32)


def te_compute(q: Any, exclude: Any | None = None, table: Any | None = None, *, x0: int, n: int,
               k: int = 16) -> Any:
    """TVM TE Shiftmax over the last axis of ``q`` (any rank >= 1).

    With ``table`` (:func:`exp_table` of ``q``'s dtype, a constant) each exponential is one
    load instead of the int64 arithmetic of ``shift_exp`` (a division by ``x0`` that x86
    cannot vectorize); the values are the same. The table path then runs in 32-bit lanes,
    which x86 vectorizes (it has no 64-bit vector max or multiply): ``q - max_row(q)`` and
    ``e`` are int32, only the row sum ``S`` is int64, and the last step is exact in uint32,
    because ``e <= S`` gives ``e * f = e * (INT31_MAX // S) <= INT31_MAX`` and the rounding
    term is below ``2**30`` (when ``S > INT31_MAX``, ``f = 0``). ``1 / S`` is computed once
    per row.
    """
    from tvm import te, tirx

    keep = _te_keep(q, exclude)
    *lead, length = q.shape
    wide = "int64" if table is None else "int32"
    # The row max starts at q's smallest value (not int64's): q - max then stays within
    # +-(2**bits - 1) even for a row with every element excluded, whose e are all 0 anyway.
    low = tirx.const(int(np.iinfo(str(q.dtype)).min), wide)
    zero = tirx.const(0, wide)
    r = te.reduce_axis((0, length), name="r")
    mx = te.compute(lead, lambda *i: te.max(tirx.Select(keep(*i, r), q(*i, r).astype(wide), low),
                                            axis=r), name="row_max")
    if table is None:
        def exp(x: Any) -> Any:
            return te_shift_exp(x, x0, n)
    else:
        top_index = tirx.const(int(table.shape[0]) - 1, "int32")

        # x > 0 only for excluded elements, whose e is 0: clamp for the load
        def exp(x: Any) -> Any:
            return table[tirx.min(x, zero) + top_index]
    e = te.compute(q.shape, lambda *i: tirx.Select(
        keep(*i), exp(q(*i).astype(wide) - mx(*i[:-1])), zero), name="shift_exp")
    r2 = te.reduce_axis((0, length), name="r2")
    s = te.compute(lead, lambda *i: te.sum(e(*i, r2).astype("int64"), axis=r2), name="row_sum")
    f = te.compute(lead, lambda *i: tirx.floordiv(
        tirx.const(INT31_MAX, "int64"), tirx.max(s(*i), tirx.const(1, "int64"))).astype("uint32"),
        name="row_recip")
    sh = 31 - (k - 1)
    top = tirx.const((1 << (k - 1)) - 1, "uint32")

    def body(*i):
        rounded = e(*i).astype("uint32") * f(*i[:-1]) + tirx.const(1 << (sh - 1), "uint32")
        v = tirx.shift_right(rounded, tirx.const(sh, "uint32"))
        return tirx.min(v, top).astype(out_dtype(k))

    return te.compute(q.shape, body, name="shiftmax")


def to_float(out: np.ndarray, k: int = 16) -> np.ndarray:
    """Probabilities as float64 (output scale 2**-(k-1))."""
    return out.astype(np.float64) / 2.0 ** (k - 1)


def schema() -> object:
    """ONNX schema of ``edgert.Shiftmax``."""
    from onnx import TensorProto

    from edgert.ops import make_schema, same_shape_output

    def elem(ctx: Any) -> int:
        return TensorProto.INT8 if ctx.get_attribute("k").i <= 8 else TensorProto.INT16

    return make_schema(
        OP_TYPE, __doc__ or "",
        inputs=[("q", "T", "integer logits at scale s; softmax over the last axis"),
                ("exclude?", "M", "nonzero where an element is left out (attention mask)")],
        outputs=[("p", "U", "probabilities at scale 2**-(k-1)")],
        type_constraints=[("T", ["tensor(int8)", "tensor(int16)"], "input"),
                          ("U", ["tensor(int8)", "tensor(int16)"], "output (int8 for k<=8)"),
                          ("M", ["tensor(bool)", "tensor(int8)", "tensor(int32)", "tensor(int64)"],
                           "exclusion mask")],
        attributes=[("x0", "INT", "floor(-1/s)"), ("n", "INT", "shift budget"),
                    ("k", "INT", "output bits (8 or 16)")],
        infer=same_shape_output(elem),
    )
