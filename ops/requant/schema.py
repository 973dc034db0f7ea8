"""ONNX interface of ``edgert.Requant``: the schema and the node attributes' conversion."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgert.ops._common.op import UnsupportedAttribute
from edgert.ops.requant import spec


def node_kwargs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """``to`` (a TensorProto enum) -> the dtype name; ``lo``, ``hi``, ``axis`` as ints.

    Raises:
        UnsupportedAttribute: ``to`` is not int8, int16 or int32.
    """
    from onnx import helper

    to = helper.tensor_dtype_to_np_dtype(int(attrs["to"])).name
    if to not in spec.OUT_DTYPES:
        raise UnsupportedAttribute(f"to={to}")
    return {"lo": int(attrs["lo"]), "hi": int(attrs["hi"]), "to": to, "axis": int(attrs["axis"])}


def schema() -> object:
    """ONNX schema of ``edgert.Requant``."""
    from edgert.ops._common.schema_util import make_schema, same_shape_output

    return make_schema(
        spec.OP_TYPE, spec.__doc__ or "",
        inputs=[("q", "T", "integer tensor at scale s_in"),
                ("multiplier", "tensor(int64)", "m, one value or one per channel of `axis`"),
                ("shift", "tensor(int64)", "e in [1, 62], same shape as multiplier")],
        outputs=[("out", "U", "integer tensor at scale s_out")],
        type_constraints=[("T", ["tensor(int8)", "tensor(int16)", "tensor(int32)"], "input"),
                          ("U", ["tensor(int8)", "tensor(int16)", "tensor(int32)"], "output")],
        attributes=[("to", "INT", "output TensorProto type (INT8, INT16 or INT32)"),
                    ("lo", "INT", "lower clamp"), ("hi", "INT", "upper clamp"),
                    ("axis", "INT", "channel axis of per-channel multiplier/shift")],
        infer=same_shape_output(lambda ctx: ctx.get_attribute("to").i),
    )
