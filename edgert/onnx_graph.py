"""Small helpers over ONNX graphs shared by the runtime (inspect) and the compiler."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import onnx
from onnx import helper

from edgert.errors import ModelError


def iter_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph``, including the nodes of If/Loop/Scan subgraphs."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from iter_nodes(g)


def node_label(node: onnx.NodeProto, index: int | None = None) -> str:
    """A name to show for a node (its name, else its first output)."""
    if node.name:
        return node.name
    if node.output:
        return f"<node producing {node.output[0]!r}>"
    return f"<node #{index}>" if index is not None else "<unnamed node>"


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The real inputs of the graph (older exporters also list initializers as inputs)."""
    inits = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in inits]


def value_info_json(value: onnx.ValueInfoProto, source: str = "model") -> dict[str, Any]:
    """``{"name", "shape", "dtype"}`` of a tensor-typed graph input or output."""
    ttype = value.type.tensor_type if value.type.HasField("tensor_type") else None
    if ttype is None or not ttype.elem_type:
        raise ModelError(f"{source}: graph input/output {value.name!r} is not a typed tensor")
    shape: list[int | str | None] = []
    if ttype.HasField("shape"):
        for dim in ttype.shape.dim:
            if dim.HasField("dim_value"):
                shape.append(int(dim.dim_value))
            elif dim.HasField("dim_param"):
                shape.append(dim.dim_param)
            else:
                shape.append(None)
    dtype = helper.tensor_dtype_to_np_dtype(ttype.elem_type).name
    return {"name": value.name, "shape": shape, "dtype": dtype}
