"""Rules for the CNN ops that exporters leave unfused: ``BatchNormalization`` (inference form)
and ``Resize`` in ``nearest`` mode.

BatchNormalization is a per-channel affine map ``y = a[c] x + b[c]`` with
``a = gamma / sqrt(var + eps)`` and ``b = beta - mean a`` (float64 at compile time):

- after an int32 accumulator (a ``Conv``'s, per output channel or per tensor along the
  channel axis) with every ``a > 0``: folded into it. The accumulator keeps its values, its
  scale becomes ``s[c] a[c]`` and ``round(b / (s a))`` is added in int32. This equals
  folding the BatchNorm into the Conv's weights (per-channel weight quantization is
  invariant to a positive per-channel factor, so the int8 weights are the same) plus one
  int32 ``Add``; the bias is rounded at the accumulator's resolution, as a Conv bias is.
- otherwise (after a non-conv op, or some ``a <= 0``): a per-channel ``Requant`` of the input
  (int8/int16 at its scale, or the accumulator) to int32 at the fine scale
  ``s_out = amax / qmax / 2^ADD_EXTRA_BITS`` with the ratio ``s[c] a[c] / s_out`` (negative or
  zero ratios are Requant's), then ``round(b / s_out)`` added in int32. One rounding of half a
  unit of ``s_out`` plus the multiplier's relative error ``2^-31``.

ConvTranspose (2-D, constant weight) is the convolution of the input with zeros inserted:
``stride - 1`` zeros after each element along each spatial axis (``Unsqueeze`` + ``Pad`` +
``Reshape`` of the int8 tensor, which keeps its scale), then ``ConvInteger`` with stride 1 and
the kernel flipped and transposed per group (``[C_in, C_out / g, kh, kw]`` ->
``[C_out, C_in / g, kh, kw]``), padded by ``dilation (k - 1) - pad`` before and that plus
``output_padding`` less the ``stride - 1`` trailing zeros after; bias and per-channel weight
scales as for ``Conv``. The integer result is exact (the inserted zeros add nothing); it costs
``stride^2`` times the multiplications of a direct transposed convolution. Static spatial dims
only; ``output_shape``, ``auto_pad`` and pads beyond ``dilation (k - 1)`` have no integer form.

Resize, nearest: each output element is one input element, so the integer tensor is resized
as it is (same scale and bound; any coordinate transformation and nearest mode). Linear and
cubic modes weight several inputs by fractional coefficients; they have no integer form here
(an error naming the node; ``--allow-float`` keeps them float32).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgert.compiler.quantize import linear, shapes
from edgert.compiler.quantize.core import (ADD_EXTRA_BITS, INT32_MAX, QMAX, QTensor, Quantizer)

LIMIT = (1 << 30) - 1       # |int32 part| before the bias is added: the sum stays in int32


def _affine(q: Quantizer, node: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray]:
    """``(a[C], b[C])`` of an inference-mode BatchNormalization with constant parameters."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("training_mode", 0) or len(node.output) > 1:
        raise q.fail("BatchNormalization in training mode has no integer form")
    params = node.input[1:5]
    missing = [p for p in params if p not in q.inits]
    if missing:
        raise q.fail(f"BatchNormalization needs constant scale, B, mean and var "
                     f"({', '.join(missing)} are computed)")
    gamma, beta, mean, var = (np.asarray(q.inits[p], np.float64).reshape(-1) for p in params)
    a = gamma / np.sqrt(var + float(attrs.get("epsilon", 1e-5)))
    return a, beta - mean * a


def batch_norm(q: Quantizer, node: onnx.NodeProto) -> None:
    """``BatchNormalization`` (inference): folded into an int32 accumulator before it, else a
    per-channel Requant to int32 plus an int32 bias (see the module docstring)."""
    x, out = node.input[0], node.output[0]
    a, b = _affine(q, node)
    rank = len(q.shapes.get(x) or q.shapes.get(out) or [])
    if rank < 2:
        raise q.fail(f"BatchNormalization input {x!r} needs a known rank >= 2")
    axis = 1 - rank
    col = (-1, *([1] * (rank - 2)))
    src = q.q.get(x)
    along = src is not None and (src.per_tensor or src.axis == axis)
    if along and src.dtype == "int32" and src.interval is None and (a > 0).all():
        scale = src.scale * a
        bias_q = np.rint(b / scale)
        bound = src.bound + int(np.abs(bias_q).max())
        if bound <= INT32_MAX:
            acc = q.emit("Add", [src.name, q.const(bias_q.astype(np.int32).reshape(col),
                                                  f"{out}_bias")], out, TensorProto.INT32)
            q.q[out] = QTensor(acc, "int32", scale, axis=axis, bound=bound)
            return
    if not along or src.interval is not None:
        src = q.need(x, q.wide())
    s_out = max(q.amax(out), 1e-12) / QMAX[q.wide()] / 2**ADD_EXTRA_BITS
    ratio = np.abs(src.scale * a) / s_out
    bound = min(LIMIT, int(np.ceil(src.bound * float(ratio.max()))) + 1)
    from edgert.ops import registry
    scaled = registry.get("Requant").quantize.insert(
        q, src.name, np.broadcast_to(src.scale * a, a.shape), axis, "int32", s_out, LIMIT, -LIMIT)
    bias_q = np.rint(b / s_out)
    if np.abs(bias_q).max() > LIMIT:
        raise q.fail(f"BatchNormalization bias {float(np.abs(b).max()):.3g} is beyond int32 at "
                     f"the output scale {s_out:.3g}")
    acc = q.emit("Add", [scaled, q.const(bias_q.astype(np.int32).reshape(col), f"{out}_bias")],
                 out, TensorProto.INT32)
    q.q[out] = QTensor(acc, "int32", np.asarray(s_out), bound=bound + int(np.abs(bias_q).max()))


def resize(q: Quantizer, node: onnx.NodeProto) -> None:
    """``Resize`` in ``nearest`` mode: the integer tensor moved as it is (a shape op); other
    modes have no integer form."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    mode = attrs.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "nearest":
        raise q.fail(f"Resize mode {mode!r} has no integer form (only 'nearest': a linear or "
                     "cubic resize weights inputs by fractional coefficients)")
    if attrs.get("antialias", 0):
        raise q.fail("Resize with antialias has no integer form")
    shapes.shape_op(q, node)


def _spread(q: Quantizer, x: QTensor, dims: list[int], strides: list[int], out: str) -> QTensor:
    """The int8 ``x`` [N, C, H, W] with ``stride - 1`` zeros after each element along H and W:
    [N, C, H sh, W sw] (the trailing zeros included), same scale and bound."""
    (h, w), (sh, sw) = dims, strides
    if sh == sw == 1:
        return x
    six = q.emit("Unsqueeze", [x.name, q.const(np.array([3, 5], np.int64), f"{out}_axes")],
                 f"{out}_unsqueezed", TensorProto.INT8)
    pads = q.const(np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, sh - 1, 0, sw - 1], np.int64),
                   f"{out}_zeros")
    padded = q.emit("Pad", [six, pads], f"{out}_zero_inserted", TensorProto.INT8)
    flat = q.emit("Reshape", [padded, q.const(np.array([0, 0, h * sh, w * sw], np.int64),
                                              f"{out}_spread_shape")],
                  f"{out}_spread", TensorProto.INT8)
    return QTensor(flat, x.dtype, x.scale, bound=x.bound)


def conv_transpose(q: Quantizer, node: onnx.NodeProto) -> None:
    """2-D ``ConvTranspose`` with a constant weight: zeros inserted into the int8 input, then
    ``ConvInteger`` with the flipped, transposed kernel (see the module docstring)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.input[1] not in q.inits:
        raise q.fail("ConvTranspose needs a constant weight")
    w = np.asarray(q.inits[node.input[1]], np.float64)
    dims = (q.shapes.get(node.input[0]) or [None])[2:]
    if w.ndim != 4 or len(dims) != 2 or None in dims:
        raise q.fail("ConvTranspose has an integer form for 2-D inputs with static height and "
                     "width only")
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    if "output_shape" in attrs or (auto_pad.decode() if isinstance(auto_pad, bytes)
                                   else auto_pad) != "NOTSET":
        raise q.fail("ConvTranspose with output_shape or auto_pad has no integer form")
    g, k = int(attrs.get("group", 1)), list(w.shape[2:])
    strides = list(attrs.get("strides", [1, 1]))
    dil = list(attrs.get("dilations", [1, 1]))
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    extra = list(attrs.get("output_padding", [0, 0]))
    before = [d * (kk - 1) - p for d, kk, p in zip(dil, k, pads[:2])]
    after = [d * (kk - 1) - p + e - (s - 1)
             for d, kk, p, e, s in zip(dil, k, pads[2:], extra, strides)]
    if min(before + after) < 0:
        raise q.fail("ConvTranspose pads beyond dilation * (kernel - 1) have no integer form")
    c_in, c_out_g = w.shape[:2]
    kernel = (w.reshape(g, c_in // g, c_out_g, *k).transpose(0, 2, 1, 3, 4)
              .reshape(g * c_out_g, c_in // g, *k)[..., ::-1, ::-1])
    conv_attrs = {"group": g, "dilations": dil, "kernel_shape": k, "pads": before + after,
                  "strides": [1, 1]}
    linear.conv_integer(q, node, np.ascontiguousarray(kernel), conv_attrs,
                        spread=lambda x: _spread(q, x, dims, strides, node.output[0]))
