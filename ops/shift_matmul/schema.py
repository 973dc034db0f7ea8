"""ONNX interface of ``edgert.ShiftMatMul``: the schema and the node attributes' conversion."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgert.ops.shift_matmul import spec


def node_kwargs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """ShiftMatMul has no attributes: no keyword arguments."""
    return {}


def _infer(ctx: Any) -> None:
    """int32; shape [..., M, N] from A's leading dims and W's last dim when known."""
    import onnx
    from onnx import TensorProto

    out = onnx.TypeProto()
    out.tensor_type.elem_type = TensorProto.INT32
    a, w = ctx.get_input_type(0), ctx.get_input_type(1)
    if (a is not None and w is not None and a.tensor_type.HasField("shape")
            and w.tensor_type.HasField("shape") and len(a.tensor_type.shape.dim) >= 2):
        dims = list(a.tensor_type.shape.dim)[:-1] + [w.tensor_type.shape.dim[-1]]
        out.tensor_type.shape.dim.extend(dims)
    ctx.set_output_type(0, out)


def schema() -> object:
    """ONNX schema of ``edgert.ShiftMatMul``."""
    from edgert.ops._common.schema_util import make_schema

    return make_schema(
        spec.OP_TYPE, spec.__doc__ or "",
        inputs=[("A", "T", "[..., M, K] at scale s_a"),
                ("W", "tensor(int8)", "[K, N] power-of-two weight codes (0, +-1..+-8)")],
        outputs=[("Y", "tensor(int32)", "[..., M, N]: sums of shifted activations")],
        type_constraints=[("T", ["tensor(int8)", "tensor(int16)"], "A")],
        attributes=[],
        infer=_infer,
    )
