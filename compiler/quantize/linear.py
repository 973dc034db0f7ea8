"""Rules for the matmuls: MatMul and Gemm with a constant weight (int8 per-channel weights, or
low-bit ``LutMatMul`` weights), MatMul of two activations, and Conv; each int32 accumulator is
bounded from the integer weights and the activation range, the range narrowed when it fails."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgert.compiler.quantize.core import (INT32_MAX, QMAX, WEIGHT_EPS, QTensor, Quantizer)
from edgert.errors import QuantizationError
from edgert.ops import DOMAIN


def matmul(q: Quantizer, node: onnx.NodeProto) -> None:
    """``MatMul``: with a constant [K, N] weight (and the bias ``Add`` after it, if any) a Linear,
    else an activation matmul."""
    w = q.weight(node)
    if w is None:
        act_matmul(q, node)
        return
    found = q.bias_add(node)
    bias, out = (found[1], found[0].output[0]) if found else (None, node.output[0])
    if found:
        q.skip.add(q.index[id(found[0])])
    linear(q, node, node.input[0], w, bias, out)


def gemm(q: Quantizer, node: onnx.NodeProto) -> None:
    """``Gemm`` with a constant B and ``transA = 0``: a Linear (``alpha``/``beta`` folded)."""
    w = q.weight(node)
    if w is None:
        raise q.fail("Gemm needs a constant B and transA = 0")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    bias = None
    if len(node.input) > 2 and node.input[2]:
        if node.input[2] not in q.inits:
            raise q.fail("Gemm with a non-constant C")
        bias = np.broadcast_to(np.asarray(q.inits[node.input[2]], np.float64)
                               * attrs.get("beta", 1.0), (w.shape[1],))
    linear(q, node, node.input[0], w, bias, node.output[0])


def _weights_per_channel(q: Quantizer, w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """int8 weights, symmetric per output channel along ``axis``; returns (wq, scale[C])."""
    other = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
    s = np.maximum(np.abs(w).max(axis=other) / 127.0, WEIGHT_EPS)
    shape = [1] * w.ndim
    shape[axis] = -1
    return np.clip(np.rint(w / s.reshape(shape)), -127, 127).astype(np.int8), s


def _fit_accumulator(q: Quantizer, a: str, dtype: str, l1: np.ndarray,
                     bias: np.ndarray | None, s_w: np.ndarray) -> tuple[int, np.ndarray | None]:
    """Largest activation ``qmax`` (<= the dtype's) for which ``qmax * l1 + |bias_q|`` fits
    int32; returns (qmax, bias_q)."""
    qmax = QMAX[dtype]
    amax = max(q.amax(a), 1e-12)
    while True:
        s_a = amax / qmax
        bias_q = None if bias is None else np.rint(bias / (s_a * s_w)).astype(np.int64)
        extra = np.zeros_like(l1) if bias_q is None else np.abs(bias_q)
        worst = int(((qmax + 1) * l1 + extra).max())     # +1: boundary saturation at -qmax-1
        if worst <= INT32_MAX:
            return qmax, bias_q
        new = int((INT32_MAX - int(extra.max())) // max(int(l1.max()), 1)) - 1
        if new < 1 or new >= qmax:
            raise q.fail(f"int32 accumulator cannot hold this layer (bound {worst})")
        qmax = new
        q.report.narrowed[a] = qmax


def linear(q: Quantizer, node: onnx.NodeProto, a: str, w: np.ndarray, bias: np.ndarray | None,
           out: str) -> None:
    """A Linear ``a @ w + bias``: int8 per-channel weights, ``MatMulInteger`` (int8 input) or
    ``edgert.IntMatMul`` (int16), or ``LutMatMul`` for a low-bit weight."""
    if node.output[0] in q.lowbit:
        lowbit_linear(q, node, a, q.lowbit[node.output[0]], bias, out)
        return
    dtype = q.linear_dtype(node, a)
    wq, s_w = _weights_per_channel(q, w, axis=1)
    l1 = np.abs(wq.astype(np.int64)).sum(axis=0)
    qmax, bias_q = _fit_accumulator(q, a, dtype, l1, bias, s_w)
    x = q.need(a, dtype, qmax=qmax)
    op, domain = ("MatMulInteger", "") if dtype == "int8" else ("IntMatMul", DOMAIN)
    acc = q.emit(op, [x.name, q.const(wq, f"{node.input[1]}_int8")], out,
                 TensorProto.INT32, domain=domain)
    _accumulator(q, acc, x, l1, bias_q, s_w, out)


def _accumulator(q: Quantizer, acc: str, x: QTensor, l1: np.ndarray, bias_q: np.ndarray | None,
                 s_w: np.ndarray, out: str) -> None:
    """Register a Linear's int32 accumulator ``acc`` (plus the int32 bias, when there is
    one) as the integer form of ``out``: scale ``s_x * s_w`` per column, bound
    ``max(|x| * l1 + |bias|)``."""
    bound = x.bound * l1
    if bias_q is not None:
        acc = q.emit("Add", [acc, q.const(bias_q.astype(np.int32), f"{out}_bias")], out,
                     TensorProto.INT32)
        bound = bound + np.abs(bias_q)
    q.q[out] = QTensor(acc, "int32", float(x.scale) * s_w, axis=-1, bound=int(bound.max()))


def lowbit_linear(q: Quantizer, node: onnx.NodeProto, a: str, lw, bias: np.ndarray | None,
                  out: str) -> None:
    """A Linear with low-bit weights (``compiler/lowbit.py``): ``LutMatMul(x: int8, W, ,
    [zero_points])`` with exact int16 tables, an int32 accumulator equal to ``x @ 2 (u - z)``
    at scale ``s_x * s_w[n] / 2`` (one weight scale per column, folded into the Requant a
    consumer asks for), the bias added in int32 at that scale."""
    from edgert.compiler import weightquant
    from edgert.compiler.lowbit import INT_TABLE_BITS

    qw = lw.qw
    try:
        s_w = np.maximum(weightquant.integer_output_scale(qw, 1.0), WEIGHT_EPS)
    except QuantizationError as e:
        raise q.fail(str(e)) from None
    l1 = np.abs(qw.signed_codes().astype(np.int64)).sum(axis=0)
    qmax, bias_q = _fit_accumulator(q, a, "int8", l1, bias, s_w)
    x = q.need(a, "int8", qmax=qmax)
    planes = q.const(qw.planes, f"{lw.weight}_lut{qw.layout.bits}")
    inputs = [x.name, planes]
    if qw.zero_points is not None:
        inputs += ["", q.const(qw.zero_points, f"{lw.weight}_lut_zero_points")]
    acc = q.emit("LutMatMul", inputs, out, TensorProto.INT32, domain=DOMAIN,
                 **qw.layout.to_attrs(), table_bits=INT_TABLE_BITS)
    _accumulator(q, acc, x, l1, bias_q, s_w, out)
    q.report.lowbit[q.current] = acc


def act_matmul(q: Quantizer, node: onnx.NodeProto) -> None:
    """``MatMul`` of two activations (attention): int8 operands, bounded by the row sums of a
    Shiftmax output or by ``K * |a| * |b|``."""
    a_name, b_name = node.input
    prev = q.q.get(a_name)
    a = prev if prev is not None and prev.row_sum is not None else q.need(a_name, "int8")
    b = q.need(b_name, "int8")
    k = q.static_dim(a_name, -1)
    if a.row_sum is not None:
        bound = a.row_sum * b.bound
    elif k is not None:
        bound = a.bound * b.bound * k
    else:
        raise q.fail("the inner dimension of an activation MatMul must be static")
    if bound > INT32_MAX:
        raise q.fail(f"int32 accumulator bound {bound} exceeded (inner dimension {k})")
    op, domain = ("MatMulInteger", "") if a.dtype == b.dtype == "int8" else ("IntMatMul", DOMAIN)
    acc = q.emit(op, [a.name, b.name], node.output[0], TensorProto.INT32, domain=domain)
    q.q[node.output[0]] = QTensor(acc, "int32", np.asarray(float(a.scale) * float(b.scale)),
                                  bound=bound)


def conv(q: Quantizer, node: onnx.NodeProto) -> None:
    """``Conv`` with a constant weight: ``ConvInteger`` on int8 per-output-channel weights, the
    bias added in int32."""
    if node.input[1] not in q.inits:
        raise q.fail("Conv needs a constant weight")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    conv_integer(q, node, np.asarray(q.inits[node.input[1]], np.float64), attrs)


def conv_integer(q: Quantizer, node: onnx.NodeProto, w: np.ndarray, attrs: dict,
                 spread: Callable[[QTensor], QTensor] | None = None) -> None:
    """``ConvInteger(x, int8 w, **attrs)`` writing ``node.output[0]`` at scale ``s_x * s_w[c]``
    per output channel, for the float weight ``w`` [C_out, C_in / group, *kernel]; the bias
    (``node.input[2]``, if any) added in int32. ``spread`` maps the int8 input to the tensor
    the convolution reads (an integer ConvTranspose's zero insertion: same scale and bound)."""
    wq, s_w = _weights_per_channel(q, w, axis=0)
    l1 = np.abs(wq.astype(np.int64)).reshape(wq.shape[0], -1).sum(axis=1)
    bias = None
    if len(node.input) > 2 and node.input[2]:
        bias = np.asarray(q.inits[node.input[2]], np.float64).reshape(-1)
    qmax, bias_q = _fit_accumulator(q, node.input[0], "int8", l1, bias, s_w)
    x = q.need(node.input[0], "int8", qmax=qmax)
    x = spread(x) if spread is not None else x
    out = node.output[0]
    acc = q.emit("ConvInteger", [x.name, q.const(wq, f"{node.input[1]}_int8")], out,
                 TensorProto.INT32, **attrs)
    bound = int((x.bound * l1).max())
    if bias_q is not None:
        b = bias_q.astype(np.int32).reshape(-1, *([1] * (w.ndim - 2)))
        acc = q.emit("Add", [acc, q.const(b, f"{out}_bias")], out, TensorProto.INT32)
        bound = int((x.bound * l1 + np.abs(bias_q)).max())
    rank = len(q.shapes.get(out) or [0] * w.ndim)
    q.q[out] = QTensor(acc, "int32", float(x.scale) * s_w, axis=1 - rank, bound=bound)
