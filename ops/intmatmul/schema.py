"""ONNX interface of ``edgert.IntMatMul``: the schema and the node attributes' conversion."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgert.ops.intmatmul import spec


def node_kwargs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """IntMatMul has no attributes: no keyword arguments."""
    return {}


def _infer(ctx: Any) -> None:
    """int32; shape [..., M, N] taken from A's leading dims and B's last dim when known."""
    import onnx
    from onnx import TensorProto

    out = onnx.TypeProto()
    out.tensor_type.elem_type = TensorProto.INT32
    a, b = ctx.get_input_type(0), ctx.get_input_type(1)
    if (a is not None and b is not None and a.tensor_type.HasField("shape")
            and b.tensor_type.HasField("shape") and len(a.tensor_type.shape.dim) >= 2):
        dims = list(a.tensor_type.shape.dim)[:-1] + [b.tensor_type.shape.dim[-1]]
        out.tensor_type.shape.dim.extend(dims)
    ctx.set_output_type(0, out)


def schema() -> object:
    """ONNX schema of ``edgert.IntMatMul``."""
    from edgert.ops._common.schema_util import make_schema

    return make_schema(
        spec.OP_TYPE, spec.__doc__ or "",
        inputs=[("A", "T1", "[..., M, K] at scale s_a"), ("B", "T2", "[..., K, N] at scale s_b")],
        outputs=[("Y", "tensor(int32)", "[..., M, N] at scale s_a * s_b")],
        type_constraints=[("T1", ["tensor(int8)", "tensor(int16)"], "A"),
                          ("T2", ["tensor(int8)", "tensor(int16)"], "B")],
        attributes=[],
        infer=_infer,
    )
