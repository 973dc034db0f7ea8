"""Rules for pooling: ``MaxPool`` on the integer tensor as it is, and the averages
(``GlobalAveragePool``, ``ReduceMean``: an int32 ``ReduceSum``; ``AveragePool``: a depthwise
``ConvInteger`` with an all-ones kernel) whose scale is divided by the window size, so that the
consumer's ``Requant`` does the division.

MaxPool: ``max`` commutes with a positive scale, so ``MaxPool(q) * s == MaxPool(q * s)``
exactly; the standard ONNX ``MaxPool`` (int8 and uint8 since opset 12; not int16) runs on the
int8 tensor and the output keeps its scale and bound. No edgert op is needed.

Averages: ``mean = sum / n`` with ``n`` the (static) number of elements per window. The int32
``sum`` of int8/int16 values is exact (bound ``n * |q|`` checked against int32); the output
tensor is that sum at scale ``s / n``. A consumer asking for int8 at scale ``s_out`` gets
``Requant(sum)`` with ``m * 2^-e = s / (n * s_out)``: the division by ``n`` is folded into the
dyadic multiplier and rounded half up with it (one rounding, at most half a unit of
``s_out`` plus the multiplier's relative error ``2^-31``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgert.compiler.quantize.core import ELEM, INT32_MAX, QTensor, Quantizer


def _small_int(q: Quantizer, name: str) -> QTensor:
    """``name`` as a per-tensor int8/int16 tensor (an int32 accumulator is requantized to the
    wide dtype at its calibrated scale)."""
    t = q.q.get(name)
    if t is None or not t.per_tensor or t.dtype == "int32":
        t = q.need(name, q.wide())
    return t


def max_pool(q: Quantizer, node: onnx.NodeProto) -> None:
    """``MaxPool`` (one output, no ``Indices``) on the int8 tensor (ONNX MaxPool takes int8 and
    uint8, not int16): same scale and bound in and out."""
    if len(node.output) > 1 and node.output[1]:
        raise q.fail("MaxPool with an Indices output has no integer form")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("storage_order", 0):
        raise q.fail("MaxPool storage_order=1 has no integer form")
    t = q.q.get(node.input[0])
    if t is None or not t.per_tensor or t.dtype != "int8":
        t = q.need(node.input[0], "int8")
    out = q.emit("MaxPool", [t.name], node.output[0], ELEM[t.dtype], **attrs)
    q.q[node.output[0]] = replace(t, name=out, interval=None)


def _window(q: Quantizer, x: str, axes: list[int]) -> int:
    """The number of elements averaged: the product of ``x``'s static dims along ``axes``."""
    n = 1
    for ax in axes:
        d = q.static_dim(x, ax)
        if d is None:
            raise q.fail(f"averaging over axis {ax} needs a static size (the divisor is a "
                         "compile-time constant)")
        n *= d
    return n


def _mean(q: Quantizer, node: onnx.NodeProto, axes: list[int], keepdims: int) -> None:
    """``mean(x, axes)`` = int32 ``ReduceSum`` at scale ``s / n``."""
    x, out = node.input[0], node.output[0]
    n = _window(q, x, axes)
    t = _small_int(q, x)
    bound = t.bound * n
    if bound > INT32_MAX:
        raise q.fail(f"the int32 sum of {n} elements (bound {bound}) exceeds int32")
    wide = q.emit("Cast", [t.name], out, TensorProto.INT32, to=TensorProto.INT32)
    axes_name = q.const(np.asarray(axes, np.int64), f"{out}_axes")
    total = q.emit("ReduceSum", [wide, axes_name], out, TensorProto.INT32, keepdims=keepdims)
    q.q[out] = QTensor(total, "int32", np.asarray(float(t.scale) / n), bound=bound)


def global_average_pool(q: Quantizer, node: onnx.NodeProto) -> None:
    """``GlobalAveragePool``: the mean over every spatial axis (2..rank-1), kept as dims of 1."""
    rank = len(q.shapes.get(node.input[0]) or [])
    if rank < 3:
        raise q.fail("GlobalAveragePool needs an input of known rank >= 3")
    _mean(q, node, list(range(2, rank)), keepdims=1)


def reduce_mean(q: Quantizer, node: onnx.NodeProto) -> None:
    """``ReduceMean`` with constant axes (attribute before opset 18, input from 18)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    rank = len(q.shapes.get(node.input[0]) or [])
    if len(node.input) > 1 and node.input[1]:
        if node.input[1] not in q.inits:
            raise q.fail("ReduceMean needs constant axes")
        axes = [int(v) for v in np.asarray(q.inits[node.input[1]]).reshape(-1)]
    else:
        axes = [int(v) for v in attrs.get("axes", [])]
    if not axes:
        if attrs.get("noop_with_empty_axes", 0):
            raise q.fail("ReduceMean with noop_with_empty_axes is an identity; not handled")
        if not rank:
            raise q.fail("ReduceMean over all axes needs an input of known rank")
        axes = list(range(rank))
    if rank:
        axes = sorted(a % rank for a in axes)
    _mean(q, node, axes, keepdims=int(attrs.get("keepdims", 1)))


def average_pool(q: Quantizer, node: onnx.NodeProto) -> None:
    """``AveragePool`` with one divisor for every window (no padding, or padding counted:
    ``count_include_pad = 1``; no ``ceil_mode``): the window sums as a depthwise
    ``ConvInteger`` with an all-ones int8 kernel (int32, exact), at scale ``s / prod(kernel)``."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    padded = any(attrs.get("pads", [])) or auto_pad not in ("NOTSET", "VALID")
    if padded and not attrs.get("count_include_pad", 0):
        raise q.fail("AveragePool over padding with count_include_pad = 0 divides border windows "
                     "by other counts; no integer form here")
    if attrs.get("ceil_mode", 0):
        raise q.fail("AveragePool with ceil_mode = 1 has partial windows; no integer form here")
    x, out = node.input[0], node.output[0]
    channels = q.static_dim(x, 1)
    if channels is None:
        raise q.fail("AveragePool needs a static channel count")
    kernel = [int(k) for k in attrs["kernel_shape"]]
    n = int(np.prod(kernel))
    t = q.q.get(x)
    if t is None or not t.per_tensor or t.dtype != "int8":
        t = q.need(x, "int8")
    ones = q.const(np.ones([channels, 1, *kernel], np.int8), f"{out}_window")
    conv = {k: v for k, v in attrs.items() if k in ("kernel_shape", "strides", "pads",
                                                       "dilations", "auto_pad")}
    total = q.emit("ConvInteger", [t.name, ones], out, TensorProto.INT32, group=channels, **conv)
    q.q[out] = QTensor(total, "int32", np.asarray(float(t.scale) / n), bound=t.bound * n)
