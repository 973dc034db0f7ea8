"""ONNX interface of ``edgert.ILayerNorm``: the schema and the node attributes' conversion."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgert.ops.ilayernorm import spec


def node_kwargs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """ILayerNorm has no attributes: no keyword arguments."""
    return {}


def schema() -> object:
    """ONNX schema of ``edgert.ILayerNorm``."""
    from onnx import TensorProto

    from edgert.ops._common.schema_util import make_schema, same_shape_output

    return make_schema(
        spec.OP_TYPE, spec.__doc__ or "",
        inputs=[("x", "T", "integer input [..., N], any scale"),
                ("bias?", "tensor(int32)", "folded beta/gamma [N] at the output scale")],
        outputs=[("out", "tensor(int32)", "(x - mean) / std at scale sqrt(N) / 2**30")],
        type_constraints=[("T", ["tensor(int8)", "tensor(int16)", "tensor(int32)"], "input")],
        attributes=[],
        infer=same_shape_output(TensorProto.INT32),
    )
