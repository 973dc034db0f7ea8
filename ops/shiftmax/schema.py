"""ONNX interface of ``edgert.Shiftmax``: the schema and the node attributes' conversion."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgert.ops.shiftmax import spec


def node_kwargs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """``x0``, ``n``, ``k`` as ints."""
    return {"x0": int(attrs["x0"]), "n": int(attrs["n"]), "k": int(attrs["k"])}


def schema() -> object:
    """ONNX schema of ``edgert.Shiftmax``."""
    from onnx import TensorProto

    from edgert.ops._common.schema_util import make_schema, same_shape_output

    def elem(ctx: Any) -> int:
        return TensorProto.INT8 if ctx.get_attribute("k").i <= 8 else TensorProto.INT16

    return make_schema(
        spec.OP_TYPE, spec.__doc__ or "",
        inputs=[("q", "T", "integer logits at scale s; softmax over the last axis"),
                ("exclude?", "M", "nonzero where an element is left out (attention mask)")],
        outputs=[("p", "U", "probabilities at scale 2**-(k-1)")],
        type_constraints=[("T", ["tensor(int8)", "tensor(int16)"], "input"),
                          ("U", ["tensor(int8)", "tensor(int16)"], "output (int8 for k<=8)"),
                          ("M", ["tensor(bool)", "tensor(int8)", "tensor(int32)", "tensor(int64)"],
                           "exclusion mask")],
        attributes=[("x0", "INT", "floor(-1/s)"), ("n", "INT", "shift budget"),
                    ("k", "INT", "output bits (8 or 16)")],
        infer=same_shape_output(elem),
    )
