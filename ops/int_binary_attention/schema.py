"""ONNX interface of ``edgert.IntBinaryAttention``: the schema and the node attributes'
conversion."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgert.ops._common.op import UnsupportedAttribute
from edgert.ops.hash_codes.spec import BITS
from edgert.ops.int_binary_attention import spec


def node_kwargs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """``bits`` and ``frac`` as ints, ``form`` as a str; UnsupportedAttribute for other
    values."""
    bits = int(attrs.get("bits", 16))
    form = attrs.get("form", "quadratic")
    form = form.decode() if isinstance(form, bytes) else str(form)
    frac = int(attrs.get("frac", spec.DEFAULT_FRAC))
    if bits not in BITS:
        raise UnsupportedAttribute(f"IntBinaryAttention bits must be one of {list(BITS)}, "
                                   f"got {bits}")
    if form not in spec.FORMS:
        raise UnsupportedAttribute(f"IntBinaryAttention form must be one of "
                                   f"{list(spec.FORMS)}, got {form!r}")
    if not 0 <= frac <= spec.MAX_FRAC:
        raise UnsupportedAttribute(f"IntBinaryAttention frac must be in 0..{spec.MAX_FRAC}, "
                                   f"got {frac}")
    return {"bits": bits, "form": form, "frac": frac}


def _infer(ctx: Any) -> None:
    """int32; shape: Q's without its last axis, then K's key axis (quadratic) or V's last
    axis (linear)."""
    import onnx
    from onnx import TensorProto

    form = ctx.get_attribute("form")
    linear = form is not None and form.s in (b"linear", "linear")
    out = onnx.TypeProto()
    out.tensor_type.elem_type = TensorProto.INT32
    q = ctx.get_input_type(0)
    last = ctx.get_input_type(4 if linear else 1)
    if (q is not None and last is not None and q.tensor_type.HasField("shape")
            and last.tensor_type.HasField("shape") and len(q.tensor_type.shape.dim) >= 3):
        dims = list(last.tensor_type.shape.dim)
        tail = dims[-1] if linear else dims[-2]
        out.tensor_type.shape.dim.extend([*list(q.tensor_type.shape.dim)[:-1], tail])
    ctx.set_output_type(0, out)


def schema() -> object:
    """ONNX schema of ``edgert.IntBinaryAttention``."""
    from edgert.ops._common.schema_util import make_schema

    i8 = "tensor(int8)"
    return make_schema(
        spec.OP_TYPE, spec.__doc__ or "",
        inputs=[("Q", i8, "[..., H, S, D] int8 queries"), ("K", i8, "[..., H, T, D] int8 keys"),
                ("Proj", i8, "[Hp, b, D] the hash: bit i is the sign of row i's dot product"),
                ("Multiplier?", "tensor(int32)", "[Hp] quadratic form: scores times m_h"),
                ("V?", i8, "[..., H, T, Dv] int8 values (linear form)")],
        outputs=[("Y", "tensor(int32)", "[..., H, S, T] scores or [..., H, S, Dv] means")],
        type_constraints=[],
        attributes=[("bits", "INT", "code bits b: 8, 16 or 32")],
        optional_attributes=[("form", "STRING", "quadratic (default) or linear"),
                             ("frac", "INT", "linear form: fraction bits of Y (default 15)")],
        infer=_infer,
    )
