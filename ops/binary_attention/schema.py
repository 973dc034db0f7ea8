"""ONNX interface of ``edgert.BinaryAttention``: the schema and the node attributes' conversion."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgert.ops._common.op import UnsupportedAttribute
from edgert.ops.binary_attention import spec
from edgert.ops.hash_codes.spec import BITS


def node_kwargs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """``bits`` as an int and ``form`` as a str; UnsupportedAttribute for other values."""
    bits = int(attrs.get("bits", 16))
    form = attrs.get("form", "quadratic")
    form = form.decode() if isinstance(form, bytes) else str(form)
    if bits not in BITS:
        raise UnsupportedAttribute(f"BinaryAttention bits must be one of {list(BITS)}, got {bits}")
    if form not in spec.FORMS:
        raise UnsupportedAttribute(f"BinaryAttention form must be one of {list(spec.FORMS)}, "
                                   f"got {form!r}")
    return {"bits": bits, "form": form}


def _infer(ctx: Any) -> None:
    """float32; shape: CodesQ's dims and V's last dim."""
    import onnx
    from onnx import TensorProto

    out = onnx.TypeProto()
    out.tensor_type.elem_type = TensorProto.FLOAT
    q, v = ctx.get_input_type(0), ctx.get_input_type(2)
    if (q is not None and v is not None and q.tensor_type.HasField("shape")
            and v.tensor_type.HasField("shape") and len(v.tensor_type.shape.dim) >= 1):
        out.tensor_type.shape.dim.extend([*q.tensor_type.shape.dim,
                                          v.tensor_type.shape.dim[-1]])
    ctx.set_output_type(0, out)


def schema() -> object:
    """ONNX schema of ``edgert.BinaryAttention``."""
    from edgert.ops._common.schema_util import make_schema

    f = "tensor(float)"
    return make_schema(
        spec.OP_TYPE, spec.__doc__ or "",
        inputs=[("CodesQ", "C", "[..., H, S] query codes"), ("CodesK", "C", "[..., H, T] key codes"),
                ("V", f, "[..., H, T, Dv] values"),
                ("Temperature?", f, "[Hp] softmax temperature per head (quadratic form)"),
                ("Bias?", f, "additive bias broadcast to [..., H, S, T] (attention mask)")],
        outputs=[("Y", f, "[..., H, S, Dv]")],
        type_constraints=[("C", ["tensor(uint8)", "tensor(uint16)", "tensor(uint32)"],
                           "one code word per vector")],
        attributes=[("bits", "INT", "code bits b: 8, 16 or 32")],
        optional_attributes=[("form", "STRING", "quadratic (default) or linear")],
        infer=_infer,
    )
