"""Stage ``lower``: an ONNX graph (fp32 or integer) -> a Relax IRModule and the manifest's
input/output specs."""

from __future__ import annotations

from edgert.compiler.stages import Context, Graph, Lowered
from edgert.onnx_graph import graph_inputs, index_ranges, value_info_json


def lower(graph: Graph, ctx: Context) -> Lowered:
    """Check that TVM (and our converters) support every op, describe the graph's inputs
    (with the proven ranges of index inputs) and outputs, and import it into Relax.

    Raises:
        UnsupportedOpError: every unsupported op, listed at once.
        CompileError: TVM's import failed.
    """
    from edgert.compiler.check import require_supported
    from edgert.compiler.lower import supported_ops, to_relax

    model = graph.model
    require_supported(model, supported_ops(), source=ctx.source)
    bounds = index_ranges(model)
    inputs = [value_info_json(v, ctx.source)
              | ({"range": bounds[v.name]} if v.name in bounds else {})
              for v in graph_inputs(model)]
    outputs = [value_info_json(v, ctx.source) for v in model.graph.output]
    ctx.stage("importing into TVM")
    return Lowered(to_relax(model, source=ctx.source), inputs, outputs)
