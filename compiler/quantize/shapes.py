"""Rules for shape and data-movement ops (Reshape, Transpose, Slice, Gather, Concat... and
Shape): the integer tensor moves as it is, at one scale."""

from __future__ import annotations

from dataclasses import replace

import onnx
from onnx import helper

from edgert.compiler.quantize.core import ELEM, QMAX, Quantizer


def shape(q: Quantizer, node: onnx.NodeProto) -> None:
    """``Shape``: of the integer tensor (same shape)."""
    x = node.input[0]
    t = q.q.get(x) or q.need(x, q.downstream_dtype(x))
    q.nodes.append(helper.make_node("Shape", [t.name], list(node.output), name=node.name,
                                    **{a.name: helper.get_attribute_value(a)
                                       for a in node.attribute}))


def shape_op(q: Quantizer, node: onnx.NodeProto) -> None:
    """Shape and data-movement ops (Reshape, Transpose, Slice, Gather, Concat...): the integer
    tensor moved as it is; Concat inputs requantized to one scale."""
    out = node.output[0]
    dtype = q.downstream_dtype(out)
    data = [0] if node.op_type != "Concat" else range(len(node.input))
    inputs = list(node.input)
    src = None
    for i in data:
        name = node.input[i]
        if not q.is_float(name):
            continue
        if node.op_type == "Concat":
            src = q.need(name, dtype, scale=max(q.amax(out), 1e-12) / QMAX[dtype])
        else:
            have = q.q.get(name)
            keep = have is not None and have.per_tensor and (have.dtype != "int32"
                                                             or have.interval is not None)
            src = have if keep else q.need(name, dtype)
        inputs[i] = src.name
    new = q.fresh(out)
    q.nodes.append(helper.make_node(node.op_type, inputs, [new], name=new,
                                    **{a.name: helper.get_attribute_value(a)
                                       for a in node.attribute}))
    q.value_types[new] = ELEM[src.dtype]
    q.q[out] = replace(src, name=new)
