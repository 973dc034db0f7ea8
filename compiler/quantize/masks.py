"""Rules for attention masks written as ``masked_fill``: ``Where(mask, C, 0)`` with a constant
``C <= -1e4`` (``-inf`` included) becomes Shiftmax's ``exclude`` input, followed through the
shape ops between it and the scores' ``Add``; and ``ConstantOfShape`` of an integer value, an
integer-valued tensor.

What the exporters write for ``nn.MultiheadAttention``'s ``key_padding_mask`` (and
``nn.TransformerEncoder``'s ``src_key_padding_mask``): PyTorch turns the bool mask into a float
bias ``zeros_like(mask).masked_fill(mask, -inf)``, i.e. ``Where(mask, -inf, zeros)`` with the
zeros from ``ConstantOfShape(Shape(mask))`` (TorchScript) or ``Expand(0, Shape(mask))``
(dynamo), reshapes and expands it to ``[batch * heads, 1, keys]`` and adds it to the scores
before the Softmax. In the integer graph the bool mask itself (``Not(mask)`` for
``Where(keep, 0, C)``) goes through the same shape ops and becomes the ``exclude`` input of the
Shiftmax (:func:`edgert.compiler.quantize.arith.add` records it): excluded elements get
probability exactly 0, as fp32's ``exp(-inf)`` (or ``exp(C)``, ``C <= -1e4``) gives. A row with
every key excluded is all zeros in the integer graph (fp32 gives NaN for ``-inf``).
The zeros' own nodes are left unread and dropped with the graph's dead nodes
(:func:`edgert.compiler.quantize.driver.finish`).

NaN guards: the exporters' ``scaled_dot_product_attention`` with a bool mask writes
``Where(IsNaN(p), 0, p)`` after the Softmax (a row with every key masked is NaN in fp32). An
integer tensor is never NaN or infinite: ``IsNaN`` / ``IsInf`` of a tensor with an integer form
is all false, and a ``Where`` on such a condition is its third input."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgert.compiler.quantize.core import ELEM, INT32_MAX, MASK_BIAS, QTensor, Quantizer

ZERO_THROUGH = {"Expand", "Reshape", "Unsqueeze", "Squeeze", "Transpose", "Identity", "Flatten",
                "Cast"}
"""Ops through which a tensor of zeros stays zeros (their first input is the data)."""


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _fill_value(node: onnx.NodeProto) -> np.ndarray:
    """The value a ``ConstantOfShape`` fills with (float32 0 when absent)."""
    value = _attrs(node).get("value")
    return np.zeros(1, np.float32) if value is None else numpy_helper.to_array(value)


def is_zero(q: Quantizer, name: str) -> bool:
    """Whether the old-graph tensor ``name`` is all zeros by construction: a zero initializer,
    ``ConstantOfShape`` of 0, or one of those through :data:`ZERO_THROUGH` ops."""
    if name in q.inits:
        return not np.any(np.asarray(q.inits[name]))
    node = q.producer.get(name)
    if node is None:
        return False
    if node.op_type == "ConstantOfShape":
        return not np.any(_fill_value(node))
    return node.op_type in ZERO_THROUGH and is_zero(q, node.input[0])


def is_mask_constant(q: Quantizer, name: str) -> bool:
    """Whether ``name`` is a constant whose every value is ``<= -1e4`` (``-inf`` included):
    ``exp`` of it relative to any finite score is 0 in fp32."""
    if name not in q.inits or not q.is_float(name) or q.inits[name].size == 0:
        return False
    return bool(np.all(np.asarray(q.inits[name], np.float64) <= -MASK_BIAS))


def never(q: Quantizer, name: str) -> bool:
    """Whether the bool tensor ``name`` is all false by construction: ``IsNaN`` / ``IsInf`` of a
    float tensor that has an integer form."""
    node = q.producer.get(name)
    return (node is not None and node.op_type in ("IsNaN", "IsInf")
            and node.input[0] in q.q)


def is_nan(q: Quantizer, node: onnx.NodeProto) -> None:
    """``IsNaN`` / ``IsInf`` of a float tensor: all false (integers are finite), written as
    ``ConstantOfShape(Shape(x), false)`` under the output's name for any reader (and dropped
    as a dead node where :func:`where` reads the condition itself)."""
    x, out = node.input[0], node.output[0]
    t = q.q.get(x) or q.need(x, q.downstream_dtype(x))
    shape = q.emit("Shape", [t.name], f"{out}_shape", TensorProto.INT64)
    false = helper.make_tensor("value", TensorProto.BOOL, [1], [False])
    q.nodes.append(helper.make_node("ConstantOfShape", [shape], [out], name=q.fresh(out),
                                    value=false))
    q.value_types[out] = TensorProto.BOOL


def where(q: Quantizer, node: onnx.NodeProto) -> None:
    """``Where(mask, C, 0)`` (or ``Where(keep, 0, C)``) with ``C <= -1e4``: an attention-mask
    bias, recorded in ``q.mask_bias`` as the bool tensor of excluded elements (the mask, or
    ``Not(keep)``; scale: the constant ``C``, the largest where it is a tensor);
    ``Where(never, a, b)`` (a NaN guard, :func:`never`) is ``b``. No other float ``Where`` has
    an integer form."""
    cond, a, b = node.input
    out = node.output[0]
    if never(q, cond) and q.is_float(b):
        q.q[out] = q.q.get(b) or q.need(b, q.downstream_dtype(b))
        return
    if is_mask_constant(q, a) and is_zero(q, b):
        exclude = cond
    elif is_zero(q, a) and is_mask_constant(q, b):
        exclude = q.emit("Not", [cond], f"{out}_exclude", TensorProto.BOOL)
    else:
        raise q.fail("a float Where has an integer form only as an attention-mask bias "
                     "Where(mask, C, 0) or Where(keep, 0, C) with a constant C <= -1e4 or -inf")
    want, have = q.shapes.get(out), q.shapes.get(cond)
    if want is None or have is None or len(want) != len(have) or any(
            w is not None and w != h for w, h in zip(want, have)):
        raise q.fail(f"the mask {cond!r} (shape {have}) must have the bias's shape {want}; "
                     "a Where that broadcasts the mask is not supported")
    c = float(np.max(q.inits[a if exclude == cond else b]))
    q.mask_bias[out] = QTensor(exclude, "bool", np.asarray(c), bound=1, interval=(0, 1))


def scale_bias(q: Quantizer, node: onnx.NodeProto, x: str, c: str) -> None:
    """``Mul`` / ``Div`` of a ``Where`` mask bias ``x`` by a scalar constant ``c`` (``baddbmm``'s
    ``beta``): still a mask bias where the product stays ``<= -1e4`` (the bias's scale holds
    its constant ``C``)."""
    t = q.mask_bias[x]
    value = float(np.asarray(q.inits[c]).reshape(-1)[0]) if c in q.inits else float("nan")
    factor = value if node.op_type == "Mul" else 1.0 / value
    if c not in q.inits or q.inits[c].size != 1 or not factor > 0 \
            or not float(t.scale) * factor <= -MASK_BIAS:
        raise q.fail(f"{node.op_type} of an attention-mask bias by {c!r}: only a positive "
                     "scalar constant that keeps the bias <= -1e4 is supported")
    q.mask_bias[node.output[0]] = replace(t, scale=t.scale * factor)


def move(q: Quantizer, node: onnx.NodeProto) -> None:
    """A shape op (Reshape, Expand, Unsqueeze, Transpose...) of an attention-mask bias: the same
    op on the integer or bool mask it stands for, which stays a mask bias (``q.mask_bias``)."""
    t = q.mask_bias[node.input[0]]
    elem = TensorProto.BOOL if t.dtype == "bool" else ELEM[t.dtype]
    new = q.fresh(node.output[0])
    q.nodes.append(helper.make_node(node.op_type, [t.name, *node.input[1:]], [new], name=new,
                                    **_attrs(node)))
    q.value_types[new] = elem
    q.mask_bias[node.output[0]] = replace(t, name=new)


def constant_of_shape(q: Quantizer, node: onnx.NodeProto) -> None:
    """Float ``ConstantOfShape`` of an integer value ``v``: the int32 ``ConstantOfShape``, an
    integer-valued tensor (scale 1, interval ``(v, v)``)."""
    value = _fill_value(node).astype(np.float64).reshape(-1)
    v = float(value[0]) if value.size == 1 else float("nan")
    if not (np.isfinite(v) and v == np.rint(v) and abs(v) <= INT32_MAX):
        raise q.fail(f"ConstantOfShape of {value.tolist()} has no integer form (only an "
                     "integer value)")
    out = node.output[0]
    fill = helper.make_tensor("value", TensorProto.INT32, [1], [int(v)])
    new = q.emit("ConstantOfShape", list(node.input), out, TensorProto.INT32, value=fill)
    q.q[out] = QTensor(new, "int32", np.asarray(1.0), bound=abs(int(v)), interval=(int(v), int(v)))
