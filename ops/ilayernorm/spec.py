"""``ILayerNorm``: integer-only layer normalization over the last axis (I-ViT, exact isqrt).

Specification (``shared/reference/ivit.md``, "I-LayerNorm"), per row of N channels, int64:
    mean   = floor(sum(x) / N)                 (floor division, also for a negative sum)
    y      = x - mean
    var    = sum(y**2)                         (the sum, not the mean)
    std    = max(isqrt(var), 1)                (exact floor square root)
    factor = (2**31 - 1) // std
    out    = ((y * factor) >> 1) + bias        int32 at scale sqrt(N) / 2**30
|y| <= std, so |(y * factor) >> 1| <= 2**30; the folded bias (beta / gamma at the output scale,
see :func:`fold_beta`) is limited to |bias| <= 2**30 so that the sum stays in int32. The input
scale cancels: the output is (x - mean) / sigma whatever the scale of x. gamma is not applied
here; it folds into the following Requant.

Input range: int8/int16 of any row length below 2**31; int32 inputs are allowed when
``N * (max(x) - min(x))**2`` (a bound on ``var``) stays below 2**63, checked by
:func:`check_range` at compile time and at run time by :func:`reference`.

ONNX (domain ``edgert``): ``ILayerNorm(x: int8|int16|int32[, bias: int32[N]]) -> int32``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit, prange

from ._intmath import INT31_MAX, isqrt, isqrt_nb

OP_TYPE = "ILayerNorm"
OUT_SHIFT = 30                # output scale sqrt(N) / 2**30
BIAS_LIMIT = 1 << 30          # |bias| <= 2**30 keeps the int32 output in range
IN_DTYPES = (np.int8, np.int16, np.int32)
INT64_MAX = (1 << 63) - 1
ISQRT_STEPS = 7
"""Guarded Newton steps of the TE isqrt. From y0 = 2**ceil(bits/2) <= 2*sqrt(v), the real Newton
error after 5 steps is < 1.1e-15 * sqrt(v) < 4e-6 for v < 2**63; integer iterates never exceed the
real ones, so y5 <= floor(sqrt(v)) + 1 and one more step settles it; the 7th is a margin (a step
at the fixed point changes nothing). Measured: at most 6 decreasing steps over 10**6 hard values."""


def output_scale(n_channels: int) -> float:
    """Real value of one output unit: ``sqrt(N) / 2**30``."""
    return math.sqrt(n_channels) / 2.0**OUT_SHIFT


def check_range(n_channels: int, lo: int, hi: int) -> None:
    """Compile-time check that rows of ``n_channels`` values in ``[lo, hi]`` cannot overflow int64.

    The floored mean lies in ``[lo, hi]``, so ``|y| <= hi - lo`` and ``var <= N * (hi - lo)**2``.

    Raises:
        ValueError: ``n_channels < 1``, ``lo > hi`` or a possible ``var`` of 2**63 or more.
    """
    if n_channels < 1 or lo > hi:
        raise ValueError(f"ILayerNorm: bad row length {n_channels} or range [{lo}, {hi}]")
    if n_channels * (hi - lo) ** 2 > INT64_MAX:
        raise ValueError(f"ILayerNorm: {n_channels} channels in [{lo}, {hi}] can overflow int64")


def _folded(beta: np.ndarray, gamma: np.ndarray, n_channels: int) -> np.ndarray:
    """``round_half_up(beta / gamma / output_scale)`` as float64 [N] (inf/nan where gamma = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.floor(np.asarray(beta, np.float64) / np.asarray(gamma, np.float64)
                        / output_scale(n_channels) + 0.5)


def bias_fits(beta: np.ndarray, gamma: np.ndarray, n_channels: int) -> np.ndarray:
    """bool [N]: the channels whose folded bias lies in ``[-2**30, 2**30]`` (a tiny gamma
    pushes ``beta / gamma`` out; the quantizer adds those betas after the scale instead)."""
    return np.abs(_folded(beta, gamma, n_channels)) <= BIAS_LIMIT


def fold_beta(beta: np.ndarray, gamma: np.ndarray, n_channels: int) -> np.ndarray:
    """The int32 bias for ``gamma * LN + beta``: ``round_half_up(beta / gamma / output_scale)``.

    Args:
        beta, gamma: float arrays of shape [N] (gamma nonzero; it folds into the next Requant).
        n_channels: N.

    Returns:
        int32 array of shape [N].

    Raises:
        ValueError: a zero or non-finite gamma, or a bias outside ``[-2**30, 2**30]``.
    """
    beta = np.asarray(beta, np.float64)
    gamma = np.asarray(gamma, np.float64)
    if np.any(gamma == 0) or not np.all(np.isfinite(gamma)) or not np.all(np.isfinite(beta)):
        raise ValueError("ILayerNorm: beta/gamma must be finite and gamma nonzero")
    if not bias_fits(beta, gamma, n_channels).all():
        raise ValueError("ILayerNorm: folded bias beta/gamma exceeds 2**30 output units")
    return _folded(beta, gamma, n_channels).astype(np.int32)


def _check_inputs(x: np.ndarray, bias: np.ndarray | None) -> None:
    if x.dtype not in IN_DTYPES:
        raise TypeError(f"ILayerNorm input must be int8, int16 or int32, got {x.dtype}")
    if x.ndim < 1 or x.shape[-1] < 1:
        raise ValueError("ILayerNorm input needs a non-empty last axis")
    if bias is not None:
        if bias.dtype != np.int32 or bias.shape != (x.shape[-1],):
            raise ValueError(f"ILayerNorm bias must be int32 of shape [{x.shape[-1]}]")
        if np.any(np.abs(bias.astype(np.int64)) > BIAS_LIMIT):
            raise ValueError("ILayerNorm bias must satisfy |bias| <= 2**30")


def reference(x: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """Normative numpy ILayerNorm over the last axis.

    Args:
        x: int8/int16/int32 array [..., N] at any scale.
        bias: optional int32 [N] at the output scale (from :func:`fold_beta`).

    Returns:
        int32 array [..., N] at scale ``sqrt(N) / 2**30``.
    """
    x = np.asarray(x)
    _check_inputs(x, bias)
    n = x.shape[-1]
    if x.size:
        check_range(n, int(x.min()), int(x.max()))
    x64 = x.astype(np.int64)
    mean = x64.sum(axis=-1, keepdims=True) // n
    y = x64 - mean
    var = (y * y).sum(axis=-1, keepdims=True)
    std = np.maximum(isqrt(var), 1)
    out = (y * (INT31_MAX // std)) >> 1
    if bias is not None:
        out = out + bias.astype(np.int64)
    return out.astype(np.int32)


@njit(cache=True, parallel=True)
def _ilayernorm_nb(x2d, bias, has_bias, out2d):
    rows, n = x2d.shape
    for r in prange(rows):
        total = np.int64(0)
        for c in range(n):
            total += np.int64(x2d[r, c])
        mean = total // n                       # numba keeps Python's floor division
        var = np.int64(0)
        for c in range(n):
            y = np.int64(x2d[r, c]) - mean
            var += y * y
        std = isqrt_nb(var)
        if std < 1:
            std = np.int64(1)
        factor = np.int64(2147483647) // std
        for c in range(n):
            v = ((np.int64(x2d[r, c]) - mean) * factor) >> 1
            if has_bias:
                v += np.int64(bias[c])
            out2d[r, c] = v


def numba_kernel(x: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """numba twin of :func:`reference` (bit-identical; no run-time range check)."""
    x = np.asarray(x)
    _check_inputs(x, bias)
    x2d = np.ascontiguousarray(x).reshape(-1, x.shape[-1])
    b = np.zeros(1, np.int32) if bias is None else np.ascontiguousarray(bias)
    out = np.empty(x2d.shape, np.int32)
    _ilayernorm_nb(x2d, b, bias is not None, out)
    return out.reshape(x.shape)


def te_isqrt(v: Any) -> Any:
    """TE: exact floor square root, elementwise, of an int64 tensor with values in ``[1, 2**63)``.

    Same algorithm as :func:`edgert.ops._intmath.isqrt`: the bit length (64 - count of leading
    zeros), y0 = 2**ceil(bits/2), then :data:`ISQRT_STEPS` Newton steps, each kept only
    while it decreases (once it stops, it stays). One small stage per step: nesting the steps
    in one expression makes TVM's simplifier blow up.

    Returns:
        int64 tensor of ``v``'s shape.
    """
    from tvm import te, tirx

    c = lambda k: tirx.const(k, "int64")  # noqa: E731

    def start(*i):
        bits = c(64) - tirx.clz(v(*i)).astype("int64")      # bit length of v >= 1
        return tirx.shift_left(c(1), tirx.shift_right(bits + c(1), c(1)))   # 2**ceil(bits/2)

    def newton_from(y: Any, step: int) -> Any:
        def newton(*i):
            # y(*i) is bound once (Let): a GPU schedule that inlines the steps into one
            # expression then grows linearly in the steps, not 3**steps.
            yv = tirx.Var(f"isqrt_y{step}_v", "int64")
            z = tirx.shift_right(yv + tirx.truncdiv(v(*i), yv), c(1))   # v, y > 0
            return tirx.Let(yv, y(*i), tirx.min(z, yv))   # = z while it decreases
        return newton

    y = te.compute(v.shape, start, name="isqrt_y0")
    for step in range(ISQRT_STEPS):
        y = te.compute(v.shape, newton_from(y, step), name=f"isqrt_y{step + 1}")
    return y


def te_compute(x: Any, bias: Any | None = None) -> Any:
    """TVM TE compute: ``x`` int8/int16/int32 [..., N], optional int32 ``bias`` [N] -> int32.

    Stages: row sum, floored mean, sum of squares, exact isqrt (:func:`te_isqrt`), reciprocal,
    then the elementwise output.
    """
    from tvm import te, tirx

    shape = list(x.shape)
    rows, n = shape[:-1], shape[-1]
    i64 = lambda k: tirx.const(k, "int64")  # noqa: E731

    k = te.reduce_axis((0, n), name="k")
    total = te.compute(rows, lambda *r: te.sum(x(*r, k).astype("int64"), axis=k), name="iln_sum")
    # The sum may be negative: floordiv, not C truncation.
    mean = te.compute(rows, lambda *r: tirx.floordiv(total(*r), i64(int(n))), name="iln_mean")
    k2 = te.reduce_axis((0, n), name="k2")

    def sq(*r):
        y = x(*r, k2).astype("int64") - mean(*r)
        return te.sum(y * y, axis=k2)

    var = te.compute(rows, sq, name="iln_var")
    # std = max(isqrt(var), 1) = isqrt(max(var, 1)); the Newton steps then never divide by 0.
    var1 = te.compute(rows, lambda *r: tirx.max(var(*r), i64(1)), name="iln_var1")
    std = te_isqrt(var1)
    factor = te.compute(rows, lambda *r: tirx.truncdiv(i64(INT31_MAX), std(*r)),  # std >= 1
                        name="iln_factor")

    def body(*idx):
        r = idx[:-1]
        v = tirx.shift_right((x(*idx).astype("int64") - mean(*r)) * factor(*r), i64(1))
        if bias is not None:
            v = v + bias[idx[-1]].astype("int64")
        return v.astype("int32")

    return te.compute(shape, body, name="ilayernorm")


def to_float(out: np.ndarray, n_channels: int) -> np.ndarray:
    """The float layer-norm estimate ``(x - mean) / std`` of an int32 output (float64)."""
    return np.asarray(out, np.float64) * output_scale(n_channels)


def schema() -> object:
    """ONNX schema of ``edgert.ILayerNorm``."""
    from onnx import TensorProto

    from edgert.ops import make_schema, same_shape_output

    return make_schema(
        OP_TYPE, __doc__ or "",
        inputs=[("x", "T", "integer input [..., N], any scale"),
                ("bias?", "tensor(int32)", "folded beta/gamma [N] at the output scale")],
        outputs=[("out", "tensor(int32)", "(x - mean) / std at scale sqrt(N) / 2**30")],
        type_constraints=[("T", ["tensor(int8)", "tensor(int16)", "tensor(int32)"], "input")],
        attributes=[],
        infer=same_shape_output(TensorProto.INT32),
    )
