"""Operation counts of every node of an ONNX graph at concrete input shapes.

Per-node shapes come from ONNX shape inference run on a copy of the graph whose inputs have
the concrete shapes (the edgert-domain schemas are registered first: they infer their output
shapes). Shape inference cannot always make every shape concrete (data-dependent shape
arithmetic that it does not propagate); then the graph is run once with the numpy reference
executor (:mod:`edgert.backends.reference`) on zero inputs with every node output captured, and
the shapes are read off the arrays. ``details["shapes_from"]`` says which one was used.

Each node is counted by its own op: an edgert-domain node by its folder's ``counts.py`` (through
:mod:`edgert.ops._common.registry`), a default-domain one by :mod:`edgert.energy.onnx_counts`.
A node that neither knows (or whose counter rejects its attributes) is listed in
:attr:`GraphCounts.uncounted` and counted as its bytes only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgert.energy.onnx_counts import NodeIO, count_standard
from edgert.errors import InputError, ModelError
from edgert.ops._common.op import OpCounts, tensor_bytes

Shape = tuple[int, ...]


@dataclass(frozen=True)
class NodeCount:
    """One node's operations and the bytes it moves.

    Attributes:
        name: the node's label (name, else its first output).
        op_type: ``op_type``, prefixed ``edgert.`` for the edgert domain.
        counts: its ``OpCounts`` (arithmetic and the bytes of all its tensors).
        weight_bytes: bytes of its inputs that are initializers (read-only weights).
        activation_bytes: bytes of its other inputs and its outputs, as its counts move them
            (0 for a view).
        activation_footprint: bytes of its non-weight tensors (inputs + outputs): what an
            SRAM must hold for the node.
    """

    name: str
    op_type: str
    counts: OpCounts
    weight_bytes: int
    activation_bytes: int
    activation_footprint: int


@dataclass
class GraphCounts:
    """All nodes' counts at one set of input shapes.

    Attributes:
        nodes: per node, in graph order.
        input_shapes: input name -> the concrete shape counted.
        weights: initializer name -> bytes read per call (every initializer a node reads; of a
            table only gathered from, the rows gathered).
        uncounted: op types (with node counts) no counter knows: their arithmetic is missing.
        shapes_from: ``"shape_inference"`` or ``"reference_run"``.
    """

    nodes: list[NodeCount]
    input_shapes: dict[str, Shape]
    weights: dict[str, int]
    uncounted: dict[str, int] = field(default_factory=dict)
    shapes_from: str = "shape_inference"

    def total(self) -> OpCounts:
        """Every node's counts summed."""
        out = OpCounts()
        for node in self.nodes:
            out = out + node.counts
        return out


def concrete_input_shapes(model: Any, given: Mapping[str, Sequence[int]] | None) -> dict[str, Shape]:
    """The concrete shape of each graph input: ``given`` where named, else the model's own
    dims, a dynamic first (batch) dim taken as 1.

    Raises:
        InputError: ``given`` names an unknown input or has the wrong rank, or a dynamic dim
            other than the first is not given.
    """
    from edgert.onnx_graph import graph_inputs, value_info_json

    given = dict(given or {})
    inputs = graph_inputs(model)
    names = [v.name for v in inputs]
    for name in given:
        if name not in names:
            raise InputError(f"input_shapes names {name!r}, the model's inputs are "
                             f"{', '.join(names)}")
    out: dict[str, Shape] = {}
    for value in inputs:
        dims = value_info_json(value)["shape"]
        if value.name in given:
            shape = tuple(int(d) for d in given[value.name])
            if len(shape) != len(dims):
                raise InputError(f"input_shapes[{value.name!r}] has rank {len(shape)}, the "
                                 f"model's input has rank {len(dims)}")
            out[value.name] = shape
            continue
        shape = []
        for i, d in enumerate(dims):
            if isinstance(d, int):
                shape.append(d)
            elif i == 0:
                shape.append(1)
            else:
                raise InputError(f"input {value.name!r} has a dynamic dim {d!r} at position "
                                 f"{i}: give its shape (input_shapes / --input-shape)")
        out[value.name] = tuple(shape)
    return out


def count_graph(model: Any, input_shapes: Mapping[str, Sequence[int]] | None = None) -> GraphCounts:
    """Count every node of ``model`` (an ``onnx.ModelProto``) at these input shapes (see
    :func:`concrete_input_shapes` for the defaults)."""
    shapes = concrete_input_shapes(model, input_shapes)
    tensors, how = _tensor_types(model, shapes)
    weights = {t.name: _init_bytes(t) for t in model.graph.initializer}
    nodes: list[NodeCount] = []
    uncounted: dict[str, int] = {}
    for i, node in enumerate(model.graph.node):
        try:
            nc = _count_node(node, i, tensors, weights)
        except (KeyError, ValueError, IndexError, TypeError):
            nc = None                           # a form its counter does not know: listed
        if nc is None:
            nc = _bytes_only(node, i, tensors, weights)
            uncounted[nc.op_type] = uncounted.get(nc.op_type, 0) + 1
        nodes.append(nc)
    return GraphCounts(nodes, shapes, _weights_read(model, tensors, weights), uncounted, how)


def _weights_read(model: Any, tensors: Mapping[str, tuple[Shape, np.dtype]],
                  weights: Mapping[str, int]) -> dict[str, int]:
    """initializer name -> bytes of it read per call: all of it, except a table read only as
    the data of Gather nodes (an embedding), of which only the gathered rows (the Gathers'
    outputs, at most the whole table)."""
    gathered: dict[str, int] = {}
    other: set[str] = set()
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name not in weights:
                continue
            if node.op_type == "Gather" and node.domain in ("", "ai.onnx") and i == 0:
                shape, dtype = tensors[node.output[0]]
                gathered[name] = gathered.get(name, 0) + tensor_bytes([shape], [dtype])
            else:
                other.add(name)
    out = {name: weights[name] for name in other}
    out.update({name: min(n, weights[name]) for name, n in gathered.items() if name not in other})
    return out


# --- shapes ----------------------------------------------------------------------------------

def _tensor_types(model: Any, shapes: Mapping[str, Shape]) -> tuple[dict, str]:
    """name -> (shape, numpy dtype) of every tensor, and how the shapes were found."""
    import onnx

    from edgert.ops import register_schemas_for

    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    del fixed.graph.value_info[:]
    for value in fixed.graph.input:
        if value.name in shapes:
            dims = value.type.tensor_type.shape.dim
            for d, n in zip(dims, shapes[value.name]):
                d.Clear()
                d.dim_value = int(n)
    register_schemas_for(fixed)
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    except Exception as e:  # noqa: BLE001 (onnx raises several kinds)
        raise ModelError(f"shape inference failed on the graph: {e}") from None
    tensors = _known_types(inferred)
    outputs = [o for node in model.graph.node for o in node.output if o]
    if all(o in tensors for o in outputs):
        return tensors, "shape_inference"
    return _run_for_types(fixed, shapes), "reference_run"


def _known_types(model: Any) -> dict[str, tuple[Shape, np.dtype]]:
    """Tensors whose type and every dim are known, from the graph's declared values."""
    import onnx

    out: dict[str, tuple[Shape, np.dtype]] = {}
    g = model.graph
    for t in g.initializer:
        out[t.name] = (tuple(int(d) for d in t.dims),
                       onnx.helper.tensor_dtype_to_np_dtype(t.data_type))
    for v in [*g.input, *g.value_info, *g.output]:
        tt = v.type.tensor_type
        if not v.type.HasField("tensor_type") or not tt.elem_type or not tt.HasField("shape"):
            continue
        if not all(d.HasField("dim_value") for d in tt.shape.dim):
            continue
        out[v.name] = (tuple(int(d.dim_value) for d in tt.shape.dim),
                       onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
    for node in g.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            value = onnx.numpy_helper.to_array(node.attribute[0].t) \
                if node.attribute and node.attribute[0].type == onnx.AttributeProto.TENSOR \
                else None
            if value is not None:
                out[node.output[0]] = (tuple(value.shape), value.dtype)
    return out


def _run_for_types(model: Any, shapes: Mapping[str, Shape]) -> dict[str, tuple[Shape, np.dtype]]:
    """Run ``model`` once on zeros with the reference executor, every node output captured."""
    import onnx

    from edgert.backends.reference import reference_evaluator

    feeds = {}
    for v in model.graph.input:
        if v.name in shapes:
            dt = onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)
            feeds[v.name] = np.zeros(shapes[v.name], dtype=dt)
    names = [o for node in model.graph.node for o in node.output if o]
    try:
        values = reference_evaluator(model).run(names, feeds)
    except Exception as e:  # noqa: BLE001 (any failure of the executor)
        raise ModelError(f"could not find the graph's tensor shapes: shape inference left "
                         f"some unknown and the reference run failed: {e}") from None
    out = _known_types(model)
    for name, value in zip(names, values):
        arr = np.asarray(value)
        out[name] = (tuple(arr.shape), arr.dtype)
    return out


# --- one node --------------------------------------------------------------------------------

def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def _io(node: Any, tensors: Mapping[str, tuple[Shape, np.dtype]]) -> NodeIO:
    ins = [tensors.get(n) if n else None for n in node.input]
    outs = [tensors[n] for n in node.output if n]
    return NodeIO([None if t is None else t[0] for t in ins],
                  [None if t is None else t[1] for t in ins],
                  [t[0] for t in outs], [t[1] for t in outs], _attrs(node))


def _count_node(node: Any, index: int, tensors: Mapping, weights: Mapping[str, int]) -> NodeCount | None:
    """The node's counts, or ``None`` when no counter knows its op."""
    from edgert.ops import DOMAIN, registry

    io = _io(node, tensors)
    if node.domain == DOMAIN:
        op = registry.find(node.op_type)
        if op is None:
            return None
        counts = op.counts(io.in_shapes, io.in_dtypes, io.attrs)
        label = f"edgert.{node.op_type}"
    elif node.domain in ("", "ai.onnx"):
        counts = count_standard(node.op_type, io)
        if counts is None:
            return None
        label = node.op_type
    else:
        return None
    return _node_count(node, index, label, counts, io, weights)


def _bytes_only(node: Any, index: int, tensors: Mapping, weights: Mapping[str, int]) -> NodeCount:
    io = _io(node, tensors)
    label = f"{node.domain}.{node.op_type}" if node.domain else node.op_type
    return _node_count(node, index, label, io.moved, io, weights)


def _node_count(node: Any, index: int, label: str, counts: OpCounts, io: NodeIO,
                weights: Mapping[str, int]) -> NodeCount:
    from edgert.onnx_graph import node_label

    weight = sum(weights[n] for n in node.input if n in weights)
    moved = counts.bytes_read + counts.bytes_written
    acts_in = [(s, d) for n, s, d in zip(node.input, io.in_shapes, io.in_dtypes)
               if n not in weights]
    footprint = tensor_bytes([s for s, _ in acts_in], [d for _, d in acts_in]) \
        + tensor_bytes(io.out_shapes, io.out_dtypes)
    return NodeCount(node_label(node, index), label, counts, weight,
                     max(0, moved - weight), footprint)


def _init_bytes(t: Any) -> int:
    import onnx

    n = int(np.prod(list(t.dims), dtype=np.int64))
    return n * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
