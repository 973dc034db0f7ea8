"""ONNX interface of ``edgert.IntTable``: the schema and the node attributes' conversion."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgert.ops.inttable import spec


def node_kwargs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """No keyword arguments: the optional ``function`` attribute only names the table."""
    return {}


def _infer(ctx: Any) -> None:
    """Output: input 0's shape, the table's (input 1's) element type."""
    import onnx

    q_type, t_type = ctx.get_input_type(0), ctx.get_input_type(1)
    if q_type is None or t_type is None or not q_type.HasField("tensor_type"):
        return
    out = onnx.TypeProto()
    out.tensor_type.elem_type = t_type.tensor_type.elem_type
    if q_type.tensor_type.HasField("shape"):
        out.tensor_type.shape.CopyFrom(q_type.tensor_type.shape)
    ctx.set_output_type(0, out)


def schema() -> object:
    """ONNX schema of ``edgert.IntTable``."""
    from edgert.ops._common.schema_util import make_schema

    return make_schema(
        spec.OP_TYPE, spec.__doc__ or "",
        inputs=[("q", "tensor(int8)", "int8 input at scale s_in"),
                ("table", "T", "[256]: entry q + 128 is the output for q")],
        outputs=[("out", "T", "f(q * s_in) at scale s_out, q's shape")],
        type_constraints=[("T", ["tensor(int8)", "tensor(int16)"], "table and output")],
        attributes=[],
        optional_attributes=[("function", "STRING", "what the table holds (for readers)")],
        infer=_infer,
    )
