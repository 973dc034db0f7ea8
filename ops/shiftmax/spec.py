"""``Shiftmax``: integer softmax over the last axis (I-ViT, with our pinned choices).

Specification (``docs/methods/ivit.md``, "Shiftmax"); input int8 ``q`` at scale ``s``,
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

import numpy as np

from edgert.ops._intmath.spec import INT31_MAX, shift_exp
from edgert.ops._common.op import Example

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


def keep_mask(q: np.ndarray, exclude: np.ndarray | None) -> np.ndarray:
    """bool mask of the elements that take part, broadcast to ``q``'s shape."""
    if exclude is None:
        return np.ones(q.shape, bool)
    return np.broadcast_to(np.asarray(exclude) == 0, q.shape)


def reference(q: np.ndarray, exclude: np.ndarray | None = None, *, x0: int, n: int,
              k: int = 16) -> np.ndarray:
    """Normative numpy Shiftmax over the last axis; int64 intermediates."""
    q = q.astype(np.int64)
    keep = keep_mask(q, exclude)
    mx = np.where(keep, q, np.iinfo(np.int64).min).max(axis=-1, keepdims=True)
    x = np.where(keep, q - np.where(keep.any(axis=-1, keepdims=True), mx, 0), 0)
    e = np.where(keep, shift_exp(x, x0, n), 0)
    s = np.maximum(e.sum(axis=-1, keepdims=True), 1)
    f = INT31_MAX // s
    sh = 31 - (k - 1)
    out = np.minimum((e * f + (1 << (sh - 1))) >> sh, (1 << (k - 1)) - 1)
    return out.astype(out_dtype(k))


def exp_table(dtype: str, *, x0: int, n: int) -> np.ndarray:
    """``shift_exp(x, x0, n)`` for every ``x = q - max_row(q)`` an input of ``dtype`` can give:
    int32 [2**bits], entry ``j`` for ``x = j - (2**bits - 1)`` (so the last entry is x = 0)."""
    size = 1 << (8 * np.dtype(dtype).itemsize)
    e = shift_exp(np.arange(-(size - 1), 1, dtype=np.int64), x0, n)
    if e.max() >= 2**31:
        raise ValueError(f"Shiftmax constants out of range: x0={x0}, n={n} (use params())")
    return e.astype(np.int32)


def to_float(out: np.ndarray, k: int = 16) -> np.ndarray:
    """Probabilities as float64 (output scale 2**-(k-1))."""
    return out.astype(np.float64) / 2.0 ** (k - 1)


def example(rng: np.random.Generator) -> Example:
    """int8 logits [2, 3, 16] at scale 0.05, the last key of each row excluded, k = 16."""
    q = rng.integers(-128, 128, (2, 3, 16)).astype(np.int8)
    exclude = np.zeros((2, 1, 16), np.int8)
    exclude[..., -1] = 1
    return Example((q, exclude), params(0.05, 16, k=16))
