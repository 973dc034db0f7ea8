"""The graph walk: every node of the fp32 graph through its rule, graph inputs and outputs
(``io``), the checked integer model; :func:`quantize_model` is the entry point."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
from onnx import helper

from edgert.compiler.calibrate import TensorRange
from edgert.compiler.quantize import layernorm, opset, rules
from edgert.compiler.quantize.core import ELEM, OPSET, QMAX, QTensor, QuantizeReport, Quantizer
from edgert.compiler.quantize.fallback import float_node, is_float_node, restore, save
from edgert.errors import QuantizationError, UnsupportedOpError
from edgert.onnx_graph import graph_inputs, node_label
from edgert.ops import DOMAIN, OPSET_VERSION, register_schemas


def run(q: Quantizer) -> onnx.ModelProto:
    """Rewrite every node of ``q.model`` with its rule (or keep it float32 with
    ``allow_float``) and return the checked integer model."""
    handlers = q.rules = rules.table()
    fused = layernorm.decomposed(q)     # index of a ReduceMean -> LayerNormalization
    bad = [(n.op_type, node_label(n, i)) for i, n in enumerate(q.model.graph.node)
           if i not in q.skip and is_float_node(q, n) and fused.get(i, n).op_type not in handlers]
    if bad and not q.allow_float:
        raise UnsupportedOpError(bad, source=f"{q.source} (no integer form; --allow-float "
                                 "keeps such nodes in float32)")
    new_graph_inputs(q)
    version = opset.model_opset(q.model)
    for i, node in enumerate(q.model.graph.node):
        if i in q.skip:
            continue
        q.current = node_label(node, i)
        node = opset.modern(q, fused.get(i, node), version)
        if not is_float_node(q, node):
            q.nodes.append(node)
            continue
        handler = handlers.get(node.op_type)
        if handler is None:
            float_node(q, node, f"{node.op_type} has no integer form")
        elif not q.allow_float:
            handler(q, node)
        else:
            saved = save(q)
            try:
                handler(q, node)
            except QuantizationError as e:
                restore(q, saved)
                float_node(q, node, getattr(e, "reason", str(e)))
    return finish(q)


def new_graph_inputs(q: Quantizer) -> None:
    """The inputs of the new graph. Float inputs stay float32 tensors (``io="float"``: a
    consumer quantizes them) or become integer inputs (``io="int8"``: one dtype, the widest
    its consumers want, at the calibrated scale ``float32(amax / qmax)``)."""
    for v in graph_inputs(q.model):
        if not q.is_float(v.name):
            q.new_inputs.append(v)
            continue
        if q.io == "float":
            q.float_values[v.name] = v.name
            q.new_inputs.append(v)
            continue
        q.current = f"<graph input {v.name!r}>"
        dtype = q.downstream_dtype(v.name)
        scale = float(np.float32(max(q.amax(v.name), 1e-12) / QMAX[dtype]))
        t = QTensor(v.name, dtype, np.asarray(scale), bound=QMAX[dtype] + 1)
        q.q[v.name] = q.int_inputs[v.name] = t
        q.report.dtypes.setdefault(v.name, dtype)
        q.report.io.setdefault("inputs", {})[v.name] = {"dtype": dtype, "scale": scale,
                                                        "axis": None}
        new = onnx.ValueInfoProto()
        new.CopyFrom(v)
        new.type.tensor_type.elem_type = ELEM[dtype]
        q.new_inputs.append(new)


def finish(q: Quantizer) -> onnx.ModelProto:
    """Graph outputs (dequantized, or integer with ``io="int8"``), the kept initializers, the ONNX
    checker."""
    g = q.model.graph
    outputs = list(g.output)
    for i, out in enumerate(g.output):
        if not q.is_float(out.name):
            continue
        q.current = f"<graph output {out.name!r}>"
        if q.io == "int8":
            outputs[i] = integer_output(q, out)
            continue
        if out.name in q.float_values and out.name not in q.q:
            continue                           # computed in float32 under its own name
        t = q.q[out.name]
        axis = t.axis % len(q.shapes[out.name]) if not t.per_tensor else 0
        scale = q.const(t.scale.astype(np.float32), f"{out.name}_scale")
        attrs = {} if t.per_tensor else {"axis": axis}
        q.nodes.append(helper.make_node("DequantizeLinear", [t.name, scale], [out.name],
                                        name=f"{out.name}_dequantize", **attrs))
    declared = {o.name for o in outputs}
    q.nodes = live_nodes(q.nodes, declared)
    used = {n for node in q.nodes for n in node.input}
    kept = [t for t in g.initializer if t.name in used]    # float ones: for float nodes
    q.new_inits = [t for t in q.new_inits if t.name in used]
    vi = [helper.make_tensor_value_info(n, elem, None) for n, elem in q.value_types.items()
          if n not in declared]
    graph = helper.make_graph(q.nodes, f"{g.name}_int", q.new_inputs,
                              outputs, kept + q.new_inits, value_info=vi)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid(DOMAIN, OPSET_VERSION)],
                              producer_name="edgert", ir_version=10)
    register_schemas()
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # the checker raises several types
        raise QuantizationError(f"{q.source}: the integer graph fails the ONNX checker "
                                f"(a quantizer bug): {str(e).splitlines()[0]}") from None
    return model


def live_nodes(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """``nodes`` less those whose outputs nothing reads (transitively; ONNX nodes have no side
    effects): e.g. the zeros of a ``masked_fill`` whose mask became Shiftmax's ``exclude``."""
    read, keep = set(outputs), []
    for node in reversed(nodes):
        if any(o in read for o in node.output if o):
            keep.append(node)
            read.update(i for i in node.input if i)
    return keep[::-1]


def integer_output(q: Quantizer, out: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    """``io="int8"``: the graph output ``out`` as its integer tensor (renamed to ``out``'s
    name; an output computed in float32 is quantized to the wide dtype first); records its
    dtype and scale in the report and returns the output's new value info."""
    t = q.q.get(out.name) or q.need(out.name, q.wide())
    if t.name != out.name:
        producer = next((i for i, n in enumerate(q.nodes) if t.name in n.output), None)
        read = any(t.name in n.input for n in q.nodes) or t.name in q.int_inputs
        taken = t.name in {o.name for o in q.model.graph.output}   # renamed for another
        if producer is None or read or taken:
            q.nodes.append(helper.make_node("Identity", [t.name], [out.name],
                                            name=f"{out.name}_output"))
        else:                       # rename the producer's output (a node made here)
            node = onnx.NodeProto()
            node.CopyFrom(q.nodes[producer])
            node.output[list(node.output).index(t.name)] = out.name
            q.nodes[producer] = node
            q.value_types.pop(t.name, None)
            for table in (q.q, q.cache):       # a second output of the same tensor
                for key, value in list(table.items()):
                    if value.name == t.name:
                        table[key] = replace(value, name=out.name)
    scale = t.scale.astype(np.float32)
    if t.per_tensor:
        spec: dict = {"dtype": t.dtype, "scale": float(scale), "axis": None}
    else:
        spec = {"dtype": t.dtype, "scale": [float(v) for v in scale],
                "axis": t.axis % len(q.shapes[out.name])}
    q.report.io.setdefault("outputs", {})[out.name] = spec
    new = onnx.ValueInfoProto()
    new.CopyFrom(out)
    new.type.tensor_type.elem_type = ELEM[t.dtype]
    return new


def quantize_model(model: onnx.ModelProto, ranges: dict[str, TensorRange], *,
                   act_bits: str = "auto", source: str = "model", io: str = "float",
                   allow_float: bool = False, lowbit: dict | None = None
                   ) -> tuple[onnx.ModelProto, QuantizeReport]:
    """Rewrite a shape-inferred fp32 model into the integer ONNX graph.

    Args:
        model: the fp32 model (shape-inferred; fused patterns already folded).
        ranges: calibrated ranges of its float tensors.
        act_bits: activation dtype policy (module docstring).
        source: what to call the model in errors.
        io: ``"float"`` (boundary Quantize/DequantizeLinear) or ``"int8"`` (integer graph
            inputs and outputs; their scales in ``report.io``).
        allow_float: keep nodes without an integer form in float32 instead of failing
            (``report.float_nodes`` says which and why).
        lowbit: node output -> :class:`edgert.compiler.lowbit.LowbitWeight`: those Linears
            become ``LutMatMul`` on int8 activations (``report.lowbit`` names them).

    Raises:
        UnsupportedOpError: nodes without an integer form (all listed at once; not with
            ``allow_float``).
        QuantizationError: a node whose range checks cannot be met (named; with
            ``allow_float`` only where keeping it float fails too).
    """
    q = Quantizer(model, ranges, act_bits=act_bits, source=source, io=io, allow_float=allow_float,
                  lowbit=lowbit)
    return run(q), q.report
