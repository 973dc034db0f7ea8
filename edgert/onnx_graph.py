"""Small helpers over ONNX graphs shared by the runtime (inspect) and the compiler."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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


def node_attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """The value of ``node``'s attribute ``name``, or ``default`` when the node has none."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


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


# Ops through which an integer input reaches a Gather with its values unchanged.
_VALUE_PRESERVING = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity",
                     "Transpose", "Expand"}


def index_ranges(model: onnx.ModelProto) -> dict[str, dict[str, Any]]:
    """Valid values of the integer graph inputs used as ``Gather`` indices into constant data.

    An input that reaches the indices of a ``Gather`` (directly or through Cast, Reshape,
    Unsqueeze, Squeeze, Flatten, Identity, Transpose, Expand) whose data is an initializer of
    ``n`` rows along the gathered axis may only hold values in ``[-n, n - 1]`` (ONNX Gather
    semantics): anything else reads outside the table. Compiled kernels do not check indices
    (TVM's fast take), so :class:`edgert.Session` checks them against this before running.

    Returns:
        ``{input name: {"min": int, "max": int, "why": "Gather node 'x' over n rows"}}``;
        with several such Gathers the tightest bound wins.
    """
    g = model.graph
    sizes = {t.name: list(t.dims) for t in g.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in g.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    ranges: dict[str, dict[str, Any]] = {}
    for v in graph_inputs(model):
        elem = v.type.tensor_type.elem_type if v.type.HasField("tensor_type") else 0
        if elem not in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            continue
        seen, todo = {v.name}, [v.name]
        while todo:
            name = todo.pop()
            for node in consumers.get(name, []):
                if node.op_type in _VALUE_PRESERVING and node.input[0] == name:
                    for out in node.output[:1]:
                        if out not in seen:
                            seen.add(out)
                            todo.append(out)
                elif (node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == name
                      and node.input[0] in sizes):
                    dims = sizes[node.input[0]]
                    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                    if not -len(dims) <= axis < len(dims):
                        continue
                    n = int(dims[axis])
                    if v.name not in ranges or n - 1 < ranges[v.name]["max"]:
                        ranges[v.name] = {"min": -n, "max": n - 1,
                                          "why": f"Gather {node_label(node)} over {n} rows"}
    return ranges


def same_pads(auto_pad: str, spatial: Sequence[int], kernel: Sequence[int],
              strides: Sequence[int], dilations: Sequence[int]) -> list[int]:
    """ONNX ``SAME_UPPER`` / ``SAME_LOWER`` as explicit pads (all begins, then all ends): the
    output is ``ceil(in / stride)``, the odd unit of padding goes to the end (UPPER) or the
    begin (LOWER)."""
    head, tail = [], []
    for d, k, s, dl in zip(spatial, kernel, strides, dilations):
        total = max(0, (-(-d // s) - 1) * s + (k - 1) * dl + 1 - d)
        first = (total + 1) // 2 if auto_pad == "SAME_LOWER" else total // 2
        head.append(first)
        tail.append(total - first)
    return head + tail
