"""ONNX interface of ``edgert.LMulMatMul``: the schema and the node attributes' conversion."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgert.ops._common.op import UnsupportedAttribute
from edgert.ops.lmul_matmul import spec


def node_kwargs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """``mantissa_bits`` as an int (default 4); UnsupportedAttribute outside 2..5."""
    m = int(attrs.get("mantissa_bits", spec.DEFAULT_MANTISSA_BITS))
    if m not in spec.MANTISSA_BITS:
        raise UnsupportedAttribute(f"LMulMatMul mantissa_bits must be one of "
                                   f"{list(spec.MANTISSA_BITS)}, got {m}")
    return {"mantissa_bits": m}


def _infer(ctx: Any) -> None:
    """float32; shape [broadcast batch..., M, N] when both input shapes are known."""
    import onnx
    from onnx import TensorProto

    out = onnx.TypeProto()
    out.tensor_type.elem_type = TensorProto.FLOAT
    a, b = ctx.get_input_type(0), ctx.get_input_type(1)
    if (a is not None and b is not None and a.tensor_type.HasField("shape")
            and b.tensor_type.HasField("shape") and len(a.tensor_type.shape.dim) >= 2
            and len(b.tensor_type.shape.dim) >= 2):
        a_dims, b_dims = list(a.tensor_type.shape.dim), list(b.tensor_type.shape.dim)
        out.tensor_type.shape.dim.extend(_batch(a_dims[:-2], b_dims[:-2])
                                         + [a_dims[-2], b_dims[-1]])
    ctx.set_output_type(0, out)


def _batch(a: list, b: list) -> list:
    """Broadcast batch dims (ONNX dims; a dim of value 1 yields to the other)."""
    n = max(len(a), len(b))
    a = [None] * (n - len(a)) + a
    b = [None] * (n - len(b)) + b
    return [y if x is None or (x.HasField("dim_value") and x.dim_value == 1 and y is not None)
            else x for x, y in zip(a, b)]


def schema() -> object:
    """ONNX schema of ``edgert.LMulMatMul``."""
    from edgert.ops._common.schema_util import make_schema

    return make_schema(
        spec.OP_TYPE, spec.__doc__ or "",
        inputs=[("A", "tensor(float)", "[..., M, K]"), ("B", "tensor(float)", "[..., K, N]")],
        outputs=[("Y", "tensor(float)", "[..., M, N]: L-Mul products summed in float32")],
        type_constraints=[],
        attributes=[],
        optional_attributes=[("mantissa_bits", "INT", "operand mantissa bits, 2..5 (default 4)")],
        infer=_infer,
    )
