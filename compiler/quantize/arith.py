"""Rules for elementwise arithmetic: the residual Add (a scores bias mask * C becomes Shiftmax's
``exclude``), Mul/Div by a constant, Mul of two activations (an exact integer product), Relu,
and integer-valued tensors (attention masks, counts): Cast, Sub, Mul/Div by a mask, ReduceSum,
Clip stay integer with proven intervals."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgert.compiler.quantize import masks
from edgert.compiler.quantize.core import (ADD_EXTRA_BITS, DEFAULT_ROW_LEN, ELEM, INT32_MAX,
                                           MASK_BIAS, QMAX, QTensor, Quantizer)


def add(q: Quantizer, node: onnx.NodeProto) -> None:
    """Residual ``Add``: every addend requantized to int32 at a scale 2^ADD_EXTRA_BITS finer than
    the output's; a scores bias ``mask * C`` is recorded for the Softmax instead."""
    out = node.output[0]
    biases = [n for n in node.input if n in q.mask_bias]
    if biases:
        users = q.consumers.get(out, [])
        if len(biases) != 1 or out in q.outputs or any(u.op_type != "Softmax" for u in users):
            raise q.fail("an attention-mask bias (mask * C, C <= -1e4) must be added to "
                         "scores that only feed a Softmax")
        scores = next(n for n in node.input if n not in q.mask_bias)
        q.masked[out] = (scores, q.mask_bias[biases[0]].name)
        return
    int32_sum(q, node, "Add")


def int32_sum(q: Quantizer, node: onnx.NodeProto, op: str) -> None:
    """``Add``/``Sub`` of activations and float constants (any broadcastable shape): each
    operand requantized (a constant rounded) to int32 at one scale 2^ADD_EXTRA_BITS finer than
    the output's calibrated range, then one int32 ``op``; the bound is the sum of the bounds."""
    out = node.output[0]
    dtype = q.wide()
    s_out = max(q.amax(out), 1e-12) / QMAX[dtype] / 2**ADD_EXTRA_BITS
    lim = (1 << 30) - 1
    parts, bound = [], 0
    for name in node.input:
        if name in q.inits:
            v = np.clip(np.rint(np.asarray(q.inits[name], np.float64) / s_out), -lim, lim)
            parts.append(q.const(v.astype(np.int32), f"{out}_addend"))
            bound += int(np.abs(v).max()) if v.size else 0
            continue
        src = q.q.get(name) or q.need(name, dtype)
        t = q.requant_to_int32(src, s_out, lim)
        parts.append(t.name)
        bound += t.bound
    if bound > INT32_MAX:
        raise q.fail(f"residual sum bound {bound} exceeds int32")
    acc = q.emit(op, parts, out, TensorProto.INT32)
    q.q[out] = QTensor(acc, "int32", np.asarray(s_out), bound=bound)


def scale_by_const(q: Quantizer, node: onnx.NodeProto) -> None:
    """``Mul``/``Div`` by a scalar constant: only the scale changes (no node); two activations go
    to :func:`int_product`."""
    x, c = node.input
    if c not in q.inits and node.op_type == "Mul" and x in q.inits:
        x, c = c, x
    if x in q.mask_bias:
        masks.scale_bias(q, node, x, c)
        return
    if c not in q.inits and x not in q.inits:
        int_product(q, node)
        return
    if c in q.inits and q.inits[c].size > 1 and x not in q.inits and node.op_type == "Mul":
        scale_by_tensor(q, node, x, c)
        return
    if c not in q.inits or q.inits[c].size != 1 or x in q.inits:
        raise q.fail(f"{node.op_type} of two activations has no integer form here")
    value = float(np.asarray(q.inits[c]).reshape(()))
    if value == 0.0 or not math.isfinite(value):
        raise q.fail(f"{node.op_type} by {value}")
    src = q.q.get(x) or q.need(x, q.downstream_dtype(x))
    factor = value if node.op_type == "Mul" else 1.0 / value
    out = replace(src, scale=src.scale * factor)
    q.q[node.output[0]] = out
    if q.exact(x) is not None and src.interval[0] >= 0 and float(out.scale) <= -MASK_BIAS:
        q.mask_bias[node.output[0]] = src


def scale_by_tensor(q: Quantizer, node: onnx.NodeProto, x: str, c: str) -> None:
    """``Mul`` by a constant tensor whose values are one scalar ``g`` times small integers ``m``
    (a detector's per-anchor strides 8, 16, 32): ``x`` as int32 times the int32 ``m`` exactly,
    at ``x``'s scale times ``g`` (g = the least nonzero ``|c|``)."""
    value = np.asarray(q.inits[c], np.float64)
    nonzero = np.abs(value[value != 0])
    g = float(nonzero.min()) if nonzero.size else 1.0
    m = np.rint(value / g)
    if not np.all(np.isfinite(value)) or np.abs(m - value / g).max() > 1e-6 or \
            np.abs(m).max() > QMAX["int16"]:
        raise q.fail(f"Mul by the constant tensor {c!r} has no integer form here (its values "
                     "must be one scalar times small integers)")
    t = q.q.get(x)
    if t is None or not t.per_tensor or t.dtype != "int32" or \
            t.bound * int(np.abs(m).max()) > INT32_MAX:
        t = q.as_int32(x)
    bound = t.bound * int(np.abs(m).max())
    if bound > INT32_MAX:
        raise q.fail(f"int32 product bound {bound} exceeded")
    out = q.emit("Mul", [t.name, q.const(m.astype(np.int32), f"{node.output[0]}_m")],
                 node.output[0], TensorProto.INT32)
    q.q[node.output[0]] = QTensor(out, "int32", np.asarray(float(t.scale) * g), bound=bound)


def cast(q: Quantizer, node: onnx.NodeProto) -> None:
    """``Cast`` of an integer tensor (a mask) to float: carried exactly as int32 at scale 1,
    clamped to its calibrated range."""
    src, out = node.input[0], node.output[0]
    if q.is_float(src):
        raise q.fail("Cast of a float tensor has no integer form")
    if q.types.get(src) == TensorProto.BOOL:
        a, name, interval = 1, src, (0, 1)
    else:
        a = max(1, math.ceil(q.amax(out)))
        dtype = helper.tensor_dtype_to_np_dtype(q.types[src])
        name = q.emit("Clip", [src, q.const(np.array(-a, dtype), f"{out}_lo"),
                               q.const(np.array(a, dtype), f"{out}_hi")], out, q.types[src])
        interval = (-a, a)
    c = q.emit("Cast", [name], out, TensorProto.INT32, to=TensorProto.INT32)
    q.q[out] = QTensor(c, "int32", np.asarray(1.0), bound=a, interval=interval)


def _is_int_scalar(q: Quantizer, name: str) -> bool:
    value = np.asarray(q.inits[name], np.float64)
    return value.size == 1 and bool(value.reshape(()) == np.rint(value.reshape(())))


def sub(q: Quantizer, node: onnx.NodeProto) -> None:
    """``Sub`` of integer-valued tensors or integer constants: int32 with the proven interval
    (scale 1); any other ``Sub`` (a float activation or constant on either side, such as a
    detector's anchor grid minus a box distance) is an int32 difference like :func:`add`'s
    sum (:func:`int32_sum`)."""
    if not all(q.exact(n) is not None or (n in q.inits and _is_int_scalar(q, n))
               for n in node.input):
        int32_sum(q, node, "Sub")
        return
    ends = []
    for name in node.input:
        if name in q.inits:
            v = q.int_const(name)
            ends.append((q.const(np.array(v, np.int32), f"{node.output[0]}_c"), (v, v)))
        else:
            t = q.exact(name)
            ends.append((t.name, t.interval))
    (a, (alo, ahi)), (b, (blo, bhi)) = ends
    lo, hi = alo - bhi, ahi - blo
    out = q.emit("Sub", [a, b], node.output[0], TensorProto.INT32)
    q.q[node.output[0]] = QTensor(out, "int32", np.asarray(1.0), bound=max(-lo, hi),
                                  interval=(lo, hi))


def int_product(q: Quantizer, node: onnx.NodeProto) -> None:
    """``x * mask`` or ``x / count`` with an integer-valued mask or count (pooling)."""
    a, b = node.input
    if node.op_type == "Mul" and q.exact(a) is not None:
        a, b = b, a
    e = q.exact(b)
    if e is None and node.op_type == "Mul" and q.exact(a) is None:
        act_product(q, node)
        return
    if e is None:
        raise q.fail(f"{node.op_type} of two activations has no integer form here (the "
                     "divisor must be an integer-valued tensor such as a count)")
    x = q.as_int32(a)
    lo, hi = e.interval
    if node.op_type == "Mul":
        bound = x.bound * max(-lo, hi)
        if bound > INT32_MAX:
            raise q.fail(f"int32 product bound {bound} exceeded")
        interval = None
        if x.interval is not None:
            corners = [i * j for i in x.interval for j in e.interval]
            interval = (min(corners), max(corners))
    else:
        if lo < 1:
            raise q.fail("integer division by a tensor that may be 0 (clip it to >= 1)")
        bound, interval = x.bound, None
    out = q.emit(node.op_type, [x.name, e.name], node.output[0], TensorProto.INT32)
    q.q[node.output[0]] = QTensor(out, "int32", x.scale, bound=bound, interval=interval)


def per_tensor(q: Quantizer, name: str) -> QTensor:
    """``name`` as a per-tensor int8/int16 tensor (as it is, or requantized to int16)."""
    t = q.q.get(name)
    if t is None or not t.per_tensor or t.dtype == "int32":
        t = q.need(name, "int16")
    return t


def act_product(q: Quantizer, node: onnx.NodeProto) -> None:
    """``Mul`` of two activations (SiLU's ``x * sigmoid(x)``, a squeeze-and-excitation gate
    ``x * g``; numpy broadcasting): both per-tensor int8/int16 (an int32 accumulator is
    requantized to int16 first), cast to int16 (when the product bound fits) or int32 and
    multiplied exactly; the product is at scale ``s_a * s_b``, and the consumer's ``Requant``
    rounds it once."""
    multiply(q, node.output[0], *(per_tensor(q, name) for name in node.input))


def multiply(q: Quantizer, out: str, a: QTensor, b: QTensor) -> None:
    """The exact integer product ``a * b`` (per-tensor int8/int16 operands) as the integer form
    of ``out``: int16 when the bound fits, else int32, at scale ``s_a * s_b``."""
    bound = a.bound * b.bound
    if bound > INT32_MAX:
        raise q.fail(f"product bound {bound} exceeds int32")
    dtype = "int16" if bound <= QMAX["int16"] else "int32"
    names = []
    for t in (a, b):
        names.append(t.name if t.dtype == dtype else
                     q.emit("Cast", [t.name], out, ELEM[dtype], to=ELEM[dtype]))
    new = q.emit("Mul", names, out, ELEM[dtype])
    q.q[out] = QTensor(new, dtype, np.asarray(float(a.scale) * float(b.scale)), bound=bound)


def reduce_sum(q: Quantizer, node: onnx.NodeProto) -> None:
    x, out = node.input[0], node.output[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    rank = len(q.shapes.get(x) or [])
    if len(node.input) > 1 and node.input[1]:
        if node.input[1] not in q.inits:
            raise q.fail("ReduceSum needs constant axes")
        axes = [int(v) for v in np.asarray(q.inits[node.input[1]]).reshape(-1)]
    else:
        axes = list(attrs.get("axes", [] if attrs.get("noop_with_empty_axes") else range(rank)))
    count = 1
    for ax in axes:
        count *= q.static_dim(x, ax) or DEFAULT_ROW_LEN
    t = q.as_int32(x)
    bound = t.bound * count
    if bound > INT32_MAX:
        raise q.fail(f"ReduceSum bound {bound} exceeds int32")
    new = q.emit("ReduceSum", [t.name, *node.input[1:]], out, TensorProto.INT32,
                 **{k: v for k, v in attrs.items() if k in ("keepdims", "noop_with_empty_axes")})
    interval = None if t.interval is None else (min(0, t.interval[0] * count),
                                                max(0, t.interval[1] * count))
    q.q[out] = QTensor(new, "int32", t.scale, bound=bound, interval=interval)


def _clip_bounds(q: Quantizer, node: onnx.NodeProto) -> list[float | None]:
    """The constant ``min`` and ``max`` of a Clip (``None`` where absent)."""
    out: list[float | None] = [None, None]
    for i in (1, 2):
        if len(node.input) > i and node.input[i]:
            if node.input[i] not in q.inits:
                raise q.fail("Clip needs constant bounds")
            out[i - 1] = float(np.asarray(q.inits[node.input[i]]).reshape(()))
    return out


def clip_activation(q: Quantizer, node: onnx.NodeProto) -> None:
    """``Clip`` of an activation (ReLU6): the input requantized at the output's calibrated
    scale, clamped to ``[ceil(min / s), floor(max / s)]`` (inside the dtype) by that Requant."""
    out = node.output[0]
    dtype = q.downstream_dtype(out)
    top = QMAX[dtype]
    scale = max(q.amax(out), 1e-12) / top
    lo_f, hi_f = _clip_bounds(q, node)
    lo = -top if lo_f is None else min(max(math.ceil(lo_f / scale), -top), top)
    hi = top if hi_f is None else min(max(math.floor(hi_f / scale), -top), top)
    if hi < 1 or lo > hi:
        raise q.fail(f"Clip to [{lo_f}, {hi_f}] leaves no positive integer range at scale {scale}")
    q.q[out] = q.need(node.input[0], dtype, scale=scale, qmax=hi, lo=lo)


def clip(q: Quantizer, node: onnx.NodeProto) -> None:
    """``Clip``: of a per-tensor int8/int16 tensor or an integer-valued one (a count, a mask) in
    place, else (an int32 accumulator, a per-channel scale: a ReLU6 after a Conv)
    :func:`clip_activation`."""
    x, out = node.input[0], node.output[0]
    t = q.q.get(x)
    if t is not None and (not t.per_tensor or (t.dtype == "int32" and t.interval is None)):
        clip_activation(q, node)
        return
    t = t or q.need(x, q.downstream_dtype(x))
    if not t.per_tensor or float(t.scale) <= 0:
        raise q.fail("Clip needs a per-tensor positive scale")
    top = QMAX.get(t.dtype, INT32_MAX)
    limits = [-top - 1, top]
    for i, pick in ((1, math.ceil), (2, math.floor)):
        if len(node.input) > i and node.input[i]:
            if node.input[i] not in q.inits:
                raise q.fail("Clip needs constant bounds")
            v = pick(float(np.asarray(q.inits[node.input[i]]).reshape(())) / float(t.scale))
            limits[i - 1] = min(max(v, -top - 1), top)
    lo, hi = limits
    np_dtype = np.dtype(t.dtype)
    new = q.emit("Clip", [t.name, q.const(np.array(lo, np_dtype), f"{out}_lo"),
                          q.const(np.array(hi, np_dtype), f"{out}_hi")], out, ELEM[t.dtype])
    interval = None
    if t.interval is not None:
        interval = (min(max(t.interval[0], lo), hi), max(min(t.interval[1], hi), lo))
    q.q[out] = QTensor(new, t.dtype, t.scale, bound=min(t.bound, max(-lo, hi)),
                       interval=interval)


def relu(q: Quantizer, node: onnx.NodeProto) -> None:
    """``Relu``: the input requantized with its lower clamp at 0, at the output's calibrated
    scale."""
    out = node.output[0]
    dtype = q.downstream_dtype(out)
    t = q.need(node.input[0], dtype, scale=max(q.amax(out), 1e-12) / QMAX[dtype], lo=0)
    q.q[out] = t
