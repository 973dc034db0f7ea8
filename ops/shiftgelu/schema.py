"""ONNX interface of ``edgert.ShiftGELU``: the schema and the node attributes' conversion."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgert.ops.shiftgelu import spec


def node_kwargs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """``x0``, ``n`` as ints."""
    return {"x0": int(attrs["x0"]), "n": int(attrs["n"])}


def schema() -> object:
    """ONNX schema of ``edgert.ShiftGELU``."""
    from onnx import TensorProto

    from edgert.ops._common.schema_util import make_schema, same_shape_output

    return make_schema(
        spec.OP_TYPE, spec.__doc__ or "",
        inputs=[("q", "T", "integer input at scale s")],
        outputs=[("out", "tensor(int32)", "GELU(q*s) at scale s * 2**-7")],
        type_constraints=[("T", ["tensor(int8)", "tensor(int16)"], "input")],
        attributes=[("x0", "INT", "floor(-1/(1.702*s))"), ("n", "INT", "shift budget")],
        infer=same_shape_output(TensorProto.INT32),
    )
