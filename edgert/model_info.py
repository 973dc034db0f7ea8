"""What ``edgert inspect`` reports about an ONNX model or a ``.edgert`` artifact.

The float-op count matters for integer-only graphs: every node that reads or writes a
floating-point tensor counts, except the boundary nodes that quantize a graph input or
dequantize into a graph output (counted apart as ``boundary_ops``). The float ops are listed
too: ``float_nodes`` names the nodes that compute in floating point (the nodes an
``--allow-float`` build keeps float), ``float_conversions`` counts the QuantizeLinear /
DequantizeLinear nodes inside the graph that feed and drain them; ``float_ops`` is the sum.
A ``Resize``'s ``roi`` and ``scales`` inputs (float by ONNX's definition) only place the
indices the data is read at, so a nearest ``Resize`` of an integer tensor is no float op.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import onnx
from onnx import helper

from edgert.onnx_graph import graph_inputs, index_ranges, iter_nodes, node_label, value_info_json

FLOAT_TYPES = {
    onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
}
_QUANTIZE = {"QuantizeLinear", "Quantize"}
_DEQUANTIZE = {"DequantizeLinear", "Dequantize"}


def describe_model(model: onnx.ModelProto) -> dict[str, Any]:
    """Summarise an ONNX model (types of every tensor inferred first, edgert ops included).

    Returns:
        ``{"opsets", "inputs", "outputs", "ops": {op: {"count", "dtypes"}}, "nodes",
        "float_ops", "float_nodes", "float_conversions", "boundary_ops", "untyped_tensors",
        "parameters", "parameter_bytes"}``; ``float_nodes`` lists ``{"name", "op_type"}`` of
        each float op that is not a QuantizeLinear/DequantizeLinear (graph order; ``op_type``
        is ``domain.Op`` outside the default domain), ``float_conversions`` counts those, so
        ``float_ops == len(float_nodes) + float_conversions``. ``untyped_tensors`` counts node
        outputs whose type inference could not find (they could hide float ops, so a proof of
        ``float_ops == 0`` needs it to be 0 too).
    """
    model = _inferred(model)
    g = model.graph
    types: dict[str, int] = {}
    for v in list(g.input) + list(g.output) + list(g.value_info):
        if v.type.HasField("tensor_type"):
            types[v.name] = v.type.tensor_type.elem_type
    for t in g.initializer:
        types[t.name] = t.data_type
    graph_in = {v.name for v in graph_inputs(model)}
    graph_out = {v.name for v in g.output}

    counts: Counter[str] = Counter()
    dtypes: dict[str, set[str]] = defaultdict(set)
    float_ops = boundary = conversions = 0
    float_nodes: list[dict[str, str]] = []
    for index, node in enumerate(iter_nodes(g)):
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        counts[op] += 1
        if node.op_type == "Constant" and node.attribute and node.attribute[0].type == onnx.AttributeProto.TENSOR:
            types[node.output[0]] = node.attribute[0].t.data_type
        data = node.input[:1] if node.op_type == "Resize" else node.input   # roi/scales: index math
        tensor_types = [types[n] for n in list(data) + list(node.output) if n in types]
        dtypes[op].update(_dtype_name(t) for t in tensor_types)
        if any(t in FLOAT_TYPES for t in tensor_types):
            is_boundary = (node.op_type in _QUANTIZE and node.input and node.input[0] in graph_in) or (
                node.op_type in _DEQUANTIZE and any(o in graph_out for o in node.output))
            if is_boundary:
                boundary += 1
            else:
                float_ops += 1
                if node.op_type in _QUANTIZE | _DEQUANTIZE:
                    conversions += 1
                else:
                    float_nodes.append({"name": node_label(node, index), "op_type": op})
    ranges = index_ranges(model)
    untyped = sum(1 for node in iter_nodes(g) for o in node.output if o and o not in types)
    params = sum(int(_numel(t)) for t in g.initializer)
    param_bytes = sum(len(t.raw_data) if t.raw_data else _numel(t) * _itemsize(t.data_type)
                      for t in g.initializer)
    return {
        "opsets": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "inputs": [value_info_json(v) | ({"range": ranges[v.name]} if v.name in ranges else {})
                   for v in graph_inputs(model)],
        "outputs": [value_info_json(v) for v in g.output],
        "ops": {op: {"count": n, "dtypes": sorted(dtypes[op])} for op, n in sorted(counts.items())},
        "nodes": sum(counts.values()),
        "float_ops": float_ops,
        "float_nodes": float_nodes,
        "float_conversions": conversions,
        "boundary_ops": boundary,
        "untyped_tensors": untyped,
        "parameters": params,
        "parameter_bytes": int(param_bytes),
    }


def _inferred(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with shape inference run (edgert schemas registered when it uses them)."""
    from edgert.ops import register_schemas_for

    register_schemas_for(model)
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception:  # a model inference rejects is still described with what it holds
        return model


def inspect_path(path: str | os.PathLike) -> dict[str, Any]:
    """Describe an ``.onnx`` file or an ``.edgert`` artifact (manifest fields included)."""
    from edgert.artifact import read_artifact
    from edgert.compiler.check import check_model, load_model

    path = Path(path)
    if path.suffix == ".onnx":
        info = {"kind": "onnx", "path": str(path)}
        info.update(describe_model(load_model(path)))
        return info
    art = read_artifact(path)
    m = art.manifest
    info = {
        "kind": "edgert",
        "path": str(path),
        "format_version": m["format_version"],
        "edgert_version": m.get("edgert_version"),
        "tvm_version": m.get("tvm_version"),
        "target": m.get("target", {}).get("name"),
        "compile_options": m.get("compile_options", {}),
        "quantization": m.get("quantization"),
        "lowbit": m.get("lowbit"),
        "lmul": m.get("lmul"),
        "binary_attention": m.get("binary_attention"),
        "shift_linear": m.get("shift_linear"),
        "members": {name: len(data) for name, data in art.members.items()},
    }
    info.update(describe_model(check_model(onnx.load_from_string(art.model_bytes), str(path))))
    return info


def _dtype_name(elem_type: int) -> str:
    try:
        return helper.tensor_dtype_to_np_dtype(elem_type).name
    except Exception:
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def _numel(t: onnx.TensorProto) -> int:
    n = 1
    for d in t.dims:
        n *= d
    return n


def _itemsize(elem_type: int) -> int:
    try:
        return helper.tensor_dtype_to_np_dtype(elem_type).itemsize
    except Exception:
        return 0
