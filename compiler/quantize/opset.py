"""Nodes of a model below opset 13 in the integer graph's opset (:data:`core.OPSET`).

The integer graph is written in one recent opset whatever the model's, so a node copied from
an older model must be spelled as that opset spells it. From opset 13 on, ``Squeeze`` and
``Unsqueeze`` take their ``axes``, ``ReduceSum`` its ``axes`` and ``Split`` its ``split`` as an
input instead of an attribute (PaddlePaddle's exports are opset 12); :func:`modern` moves the
attribute into a constant input (the other Reduce ops keep their attribute form: their rules
read both). The meaning of these ops does not change between the opsets, except Softmax's:
below 13 it normalizes over all the axes from ``axis`` on (the input flattened to 2-D), so the
Softmax rule takes it only where ``axis`` is the last one (:func:`old_softmax_axis_ok`).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from edgert.compiler.quantize.core import Quantizer

MOVED = {"Squeeze": "axes", "Unsqueeze": "axes", "ReduceSum": "axes", "Split": "split"}
"""op type -> the attribute that became the op's second input in opset 13."""


def model_opset(model: onnx.ModelProto) -> int:
    """The model's default-domain opset."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def modern(q: Quantizer, node: onnx.NodeProto, opset: int) -> onnx.NodeProto:
    """``node`` (of a model at ``opset``) with its moved attribute (:data:`MOVED`) as a
    constant input; the node itself when nothing moves."""
    attr = MOVED.get(node.op_type)
    if opset >= 13 or attr is None or node.domain not in ("", "ai.onnx"):
        return node
    found = [a for a in node.attribute if a.name == attr]
    if not found:
        return node
    values = np.asarray(helper.get_attribute_value(found[0]), np.int64)
    name = q.const(values, f"{node.output[0]}_{attr}")
    q.inits[name] = values
    new = onnx.NodeProto()
    new.CopyFrom(node)
    new.input[:] = [node.input[0], name]
    new.attribute.remove(next(a for a in new.attribute if a.name == attr))
    return new


def old_softmax_axis_ok(q: Quantizer, node: onnx.NodeProto) -> bool:
    """For a ``Softmax`` of a model below opset 13 (axis default 1, the input flattened to 2-D
    from ``axis`` on): True when that is the last axis alone, i.e. what opset 13 computes;
    always True from opset 13 on."""
    if model_opset(q.model) >= 13:
        return True
    rank = len(q.shapes.get(node.input[0]) or [])
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    return rank > 0 and axis % rank == rank - 1
