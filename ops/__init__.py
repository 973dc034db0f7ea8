"""The edgert op set: one folder per op, found by :mod:`edgert.ops.registry`.

Custom ops live in the ONNX domain :data:`DOMAIN`. Each op folder ``ops/<name>/`` holds the
op's numpy specification, numba kernel, TVM compute and converter, ONNX schema and operation
counts, and declares ``OP`` (``docs/adding-an-op.md``). The fp32 path uses standard ONNX ops only.
"""

from __future__ import annotations

from typing import Any

DOMAIN = "edgert"
OPSET_VERSION = 1

from edgert.ops._common import registry  # noqa: E402
from edgert.ops._common.schema_util import make_schema, same_shape_output  # noqa: E402

__all__ = ["DOMAIN", "OPSET_VERSION", "registry", "make_schema", "same_shape_output",
           "register_schemas", "register_schemas_for"]

_registered = False


def _schemas() -> list[Any]:
    """The ``OpSchema`` of every registered op."""
    return [op.schema() for op in registry.all()]


def register_schemas() -> None:
    """Register every edgert op with ONNX (checker, tools); safe to call more than once."""
    global _registered
    if _registered:
        return
    from onnx import defs

    for schema in _schemas():
        if not defs.has(schema.name, schema.since_version, schema.domain):
            defs.register_schema(schema)
    _registered = True


def register_schemas_for(model: Any) -> None:
    """Register the edgert op schemas when ``model`` (an ``onnx.ModelProto``) imports the edgert
    domain: the checker and shape inference need them."""
    if any(o.domain == DOMAIN for o in model.opset_import):
        register_schemas()
