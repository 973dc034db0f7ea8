"""``ILayerNorm``: integer-only layer normalization over the last axis (I-ViT, exact isqrt).

Specification (``docs/methods/ivit.md``, "I-LayerNorm"), per row of N channels, int64:
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

import numpy as np

from edgert.ops._intmath.spec import INT31_MAX, isqrt
from edgert.ops._common.op import Example

OP_TYPE = "ILayerNorm"
OUT_SHIFT = 30                # output scale sqrt(N) / 2**30
BIAS_LIMIT = 1 << 30          # |bias| <= 2**30 keeps the int32 output in range
IN_DTYPES = (np.int8, np.int16, np.int32)
INT64_MAX = (1 << 63) - 1


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


def check_inputs(x: np.ndarray, bias: np.ndarray | None) -> None:
    """Raise on an input dtype, shape or bias the kernels do not take."""
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
    check_inputs(x, bias)
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


def to_float(out: np.ndarray, n_channels: int) -> np.ndarray:
    """The float layer-norm estimate ``(x - mean) / std`` of an int32 output (float64)."""
    return np.asarray(out, np.float64) * output_scale(n_channels)


def example(rng: np.random.Generator) -> Example:
    """int16 rows [2, 3, 24] with a folded int32 bias [24]."""
    x = rng.integers(-3000, 3000, (2, 3, 24)).astype(np.int16)
    bias = rng.integers(-(2**20), 2**20, 24).astype(np.int32)
    return Example((x, bias), {})
