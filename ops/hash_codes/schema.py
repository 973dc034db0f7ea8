"""ONNX interface of ``edgert.HashCodes``: the schema and the node attributes' conversion."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgert.ops._common.op import UnsupportedAttribute
from edgert.ops.hash_codes import spec

_ELEM = {8: 2, 16: 4, 32: 12}      # TensorProto UINT8, UINT16, UINT32


def node_kwargs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """``bits`` as an int; UnsupportedAttribute outside 8 / 16 / 32."""
    bits = int(attrs.get("bits", 16))
    if bits not in spec.BITS:
        raise UnsupportedAttribute(f"HashCodes bits must be one of {list(spec.BITS)}, got {bits}")
    return {"bits": bits}


def _infer(ctx: Any) -> None:
    """uint8/16/32 by ``bits``; shape: X's without its last axis."""
    import onnx

    bits = ctx.get_attribute("bits")
    out = onnx.TypeProto()
    out.tensor_type.elem_type = _ELEM.get(bits.i if bits is not None else 16, 4)
    x = ctx.get_input_type(0)
    if x is not None and x.tensor_type.HasField("shape") and len(x.tensor_type.shape.dim) >= 3:
        out.tensor_type.shape.dim.extend(list(x.tensor_type.shape.dim)[:-1])
    ctx.set_output_type(0, out)


def schema() -> object:
    """ONNX schema of ``edgert.HashCodes``."""
    from edgert.ops._common.schema_util import make_schema

    f = "tensor(float)"
    return make_schema(
        spec.OP_TYPE, spec.__doc__ or "",
        inputs=[("X", f, "[..., H, S, D] vectors"), ("Anchors", f, "[Hp, m, D] unit anchors"),
                ("Gamma", f, "[Hp] 1 / (2 sigma)"), ("Mean", f, "[Hp, m] mean RBF feature"),
                ("Proj", f, "[Hp, b, m] hash projection")],
        outputs=[("Codes", "C", "[..., H, S] packed codes, bit i set = +1")],
        type_constraints=[("C", ["tensor(uint8)", "tensor(uint16)", "tensor(uint32)"],
                           "one code word per vector")],
        attributes=[("bits", "INT", "code bits b: 8, 16 or 32")],
        infer=_infer,
    )
