"""ONNX interface of ``edgert.LutMatMul``: the schema and the node attributes' conversion."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgert.ops.lut_matmul import spec
from edgert.ops.lut_matmul.layout import OP_TYPE, LutLayout


def node_kwargs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """``layout`` (a :class:`LutLayout` from the layout attributes), ``table_bits`` (None when
    absent or 0: the activation dtype's default) and ``dequant`` (bool, default False).

    Raises:
        ArtifactError: missing or invalid layout attributes.
    """
    table_bits = attrs.get("table_bits")
    return {"layout": LutLayout.from_attrs(dict(attrs)),
            "table_bits": (int(table_bits) or None) if table_bits is not None else None,
            "dequant": bool(attrs.get("dequant", 0))}


ATTRIBUTES = ("bits", "g", "group_size", "K", "N", "tile_n", "tile_k", "layout_version",
              "table_bits")


def schema() -> object:
    """ONNX schema of ``edgert.LutMatMul``."""
    from onnx import TensorProto

    from edgert.ops._common.schema_util import make_schema

    def infer(ctx: Any) -> None:
        """float32 for float A, int32 for int8 A; shape [..., M, N] (N from the attribute)."""
        import onnx

        a = ctx.get_input_type(0)
        if a is None or not a.HasField("tensor_type"):
            return
        out = onnx.TypeProto()
        out.tensor_type.elem_type = (TensorProto.FLOAT
                                     if a.tensor_type.elem_type == TensorProto.FLOAT
                                     else TensorProto.INT32)
        n_attr = ctx.get_attribute("N")
        if a.tensor_type.HasField("shape") and len(a.tensor_type.shape.dim) >= 2 and n_attr:
            dims = list(a.tensor_type.shape.dim)[:-1]
            out.tensor_type.shape.dim.extend(dims)
            out.tensor_type.shape.dim.add().dim_value = n_attr.i
        ctx.set_output_type(0, out)

    docs = {
        "bits": "weight bits b (1..4)", "g": "activations per table (4)",
        "group_size": "rows of K per scale / zero point", "K": "inner dimension",
        "N": "output columns", "tile_n": "columns per packed tile",
        "tile_k": "rows of K per packed tile (<= 64)",
        "layout_version": "packed byte order version (1)",
        "table_bits": "8 or 16: table entry width for int8 A (8 for float A)",
        "dequant": "1: multiply by the dequantized weight instead of table lookup (default 0)",
    }
    return make_schema(
        OP_TYPE, spec.__doc__ or "",
        inputs=[("A", "T", "activations [..., M, K]"),
                ("W", "tensor(uint8)", "packed bit planes (layout version 1)"),
                ("scales?", "tensor(float)", "[K/group_size, N], float A only"),
                ("zero_points?", "Z", "[K/group_size, N] codes (asymmetric), float: exact-min")],
        outputs=[("Y", "U", "float32 [..., M, N], or int32 at scale s_a * s_w[n] / 2")],
        type_constraints=[("T", ["tensor(float)", "tensor(int8)"], "activations"),
                          ("U", ["tensor(float)", "tensor(int32)"], "output"),
                          ("Z", ["tensor(uint8)", "tensor(float)"], "zero points")],
        attributes=[(name, "INT", docs[name]) for name in ATTRIBUTES],
        optional_attributes=[("dequant", "INT", docs["dequant"])],
        infer=infer,
    )
