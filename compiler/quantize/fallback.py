"""Float fallback (``allow_float``): a node with no integer form stays float32 — its
integer inputs dequantized, its float outputs quantized again where an integer consumer asks
(:meth:`~edgert.compiler.quantize.core.Quantizer.need`); a failed rule is rolled back first."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgert.compiler.quantize.core import Quantizer


def save(q: Quantizer) -> tuple:
    """Everything a handler changes, to undo a handler that fails (``allow_float``)."""
    r = q.report
    return (len(q.nodes), len(q.new_inits), dict(q.value_types), dict(q.cache),
            dict(q.q), set(q.skip), dict(r.dtypes), dict(r.narrowed),
            dict(q.mask_bias), dict(q.masked), dict(r.lowbit))


def restore(q: Quantizer, saved: tuple) -> None:
    n_nodes, n_inits, q.value_types, q.cache, q.q, q.skip, dtypes, narrowed, \
        q.mask_bias, q.masked, lowbit = saved
    del q.nodes[n_nodes:]
    del q.new_inits[n_inits:]
    q.report.dtypes, q.report.narrowed, q.report.lowbit = dtypes, narrowed, lowbit


def float_input(q: Quantizer, name: str) -> str:
    """The float32 tensor of the new graph standing for the old float tensor ``name``: a
    float initializer or float32 tensor as it is, an integer one through DequantizeLinear
    (``float32(q) * float32(scale)``, per channel where it has a channel scale)."""
    if name in q.inits:
        return name
    t = q.q.get(name)
    if t is None:
        if name in q.float_values:
            return q.float_values[name]
        raise q.fail(f"tensor {name!r} has neither an integer nor a float form here")
    scale = t.scale.astype(np.float32)
    attrs = {}
    if not t.per_tensor:
        rank = len(q.shapes.get(name) or [])
        if not rank:
            raise q.fail(f"the rank of {name!r} is unknown: cannot dequantize its "
                         "per-channel scale")
        attrs["axis"] = t.axis % rank
    key = (t.name, scale.tobytes(), attrs.get("axis"))
    if key not in q.dequantized:
        out = q.fresh(name, "_float")
        sc = q.const(scale, f"{name}_scale")
        q.nodes.append(helper.make_node("DequantizeLinear", [t.name, sc], [out], name=out,
                                        **attrs))
        q.value_types[out] = TensorProto.FLOAT
        q.dequantized[key] = out
    q.float_values.setdefault(name, q.dequantized[key])
    return q.dequantized[key]


def float_node(q: Quantizer, node: onnx.NodeProto, reason: str) -> None:
    """Keep ``node`` in float32 (``allow_float``): float inputs through :meth:`float_input`,
    float outputs registered in ``float_values`` under their own names (a graph output of an
    ``io="int8"`` graph gets a new name: the integer output takes the old one)."""
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for a in node.attribute):
        raise q.fail(f"{reason}, and a node with subgraphs cannot be kept in float32")
    new = onnx.NodeProto()
    new.CopyFrom(node)
    del new.input[:], new.output[:]
    new.input.extend(float_input(q, n) if n and q.is_float(n) else n for n in node.input)
    for out in node.output:
        name = out
        if out and q.is_float(out):
            if q.io == "int8" and out in q.outputs:
                name = q.fresh(out, "_float")
            q.float_values[out] = name
        if out and out in q.types:
            q.value_types[name] = q.types[out]
        new.output.append(name)
    q.nodes.append(new)
    q.report.float_nodes[q.current] = reason


def is_float_node(q: Quantizer, node: onnx.NodeProto) -> bool:
    """Whether a node reads or writes a float tensor (the others are copied as they are)."""
    return any(q.is_float(n) for n in [*node.input, *node.output] if n)
