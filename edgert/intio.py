"""Integer I/O: feed and read an artifact compiled with ``edgert compile --int-only --io int8``.

Such an artifact takes and returns the integer tensors themselves (no QuantizeLinear /
DequantizeLinear in the graph). Its manifest records how they map to real values, in
``manifest["quantization"]["io"]``::

    {"inputs":  {name: {"dtype": "int8" | "int16", "scale": float, "axis": None}},
     "outputs": {name: {"dtype": "int8" | "int16" | "int32",
                        "scale": float | list[float], "axis": int | None}}}

A list ``scale`` is per channel along ``axis`` (non-negative). The arithmetic is the integer
graph's boundary ops (``docs/integer-onnx.md``), in float32: ``q = saturate(round_half_even(x /
scale))`` for an input, ``x = float32(q) * scale`` for an output. Integer (non-float) model
inputs and outputs are not listed: they are fed and returned as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from edgert.errors import InputError


def io_specs(manifest: Mapping[str, Any]) -> dict[str, dict[str, dict[str, Any]]] | None:
    """The ``{"inputs", "outputs"}`` scales of an integer-I/O artifact's manifest, else None."""
    return (manifest.get("quantization") or {}).get("io")


def _scale(spec: Mapping[str, Any], ndim: int) -> np.ndarray:
    """The float32 scale of ``spec``, shaped to broadcast against an ``ndim``-rank tensor."""
    scale = np.asarray(spec["scale"], np.float32)
    if scale.ndim == 0:
        return scale
    axis = spec.get("axis")
    if axis is None or not 0 <= int(axis) < ndim:
        raise InputError(f"a per-channel scale needs an axis inside rank {ndim}, got {axis!r}")
    shape = [1] * ndim
    shape[int(axis)] = scale.size
    return scale.reshape(shape)


def quantize(x: np.ndarray, spec: Mapping[str, Any]) -> np.ndarray:
    """Real values -> the integer input ``spec`` describes.

    Args:
        x: the float input (any shape; converted to float32 first).
        spec: one entry of ``io_specs(manifest)["inputs"]``.

    Returns:
        ``saturate(round_half_even(float32(x) / float32(scale)))`` as ``spec["dtype"]``
        (saturating to the dtype's full range, e.g. [-128, 127] for int8), same shape as ``x``.
    """
    dtype = np.dtype(spec["dtype"])
    info = np.iinfo(dtype)
    x = np.asarray(x, np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        q = np.rint(x / _scale(spec, x.ndim))
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, spec: Mapping[str, Any]) -> np.ndarray:
    """An integer output -> real values: ``float32(q) * float32(scale)`` (per channel along
    ``spec["axis"]`` when the scale is a list); float32, same shape as ``q``."""
    q = np.asarray(q)
    return q.astype(np.float32) * _scale(spec, q.ndim)
