"""Rules for shape and data-movement ops (Reshape, Transpose, Slice, Gather, Concat, Split...
and Shape): the integer tensor moves as it is, at one scale."""

from __future__ import annotations

from dataclasses import replace

import onnx
from onnx import helper

from edgert.compiler.quantize import masks
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
    tensor moved as it is; Concat inputs requantized to one scale. An attention-mask bias moves
    as its mask (:func:`edgert.compiler.quantize.masks.move`)."""
    if node.input[0] in q.mask_bias and node.op_type != "Concat":
        masks.move(q, node)
        return
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


def split(q: Quantizer, node: onnx.NodeProto) -> None:
    """``Split`` (every output a part of the input): the integer tensor split as it is, each
    part at the input's scale and bound."""
    x = node.input[0]
    have = q.q.get(x)
    keep = have is not None and have.per_tensor and (have.dtype != "int32"
                                                     or have.interval is not None)
    src = have if keep else q.need(x, q.downstream_dtype(x))
    outputs = [q.fresh(o) if o else "" for o in node.output]
    q.nodes.append(helper.make_node("Split", [src.name, *node.input[1:]], outputs,
                                    name=outputs[0],
                                    **{a.name: helper.get_attribute_value(a)
                                       for a in node.attribute}))
    for old, new in zip(node.output, outputs):
        if old:
            q.value_types[new] = ELEM[src.dtype]
            q.q[old] = replace(src, name=new)
