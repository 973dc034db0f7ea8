"""The edgert op set: one module per op (numpy reference, numba kernel, TVM compute, schema).

Custom ops live in the ONNX domain :data:`DOMAIN`. Each op module defines ``OP_TYPE``,
``reference`` (normative numpy), ``numba_kernel``, ``te_compute`` and ``schema()``. The fp32
path uses standard ONNX ops only; the integer-only and low-bit ops are added by their issues.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

DOMAIN = "edgert"
OPSET_VERSION = 1
OP_MODULES = ("requant", "shiftmax")

_registered = False


def make_schema(op_type: str, doc: str, inputs: Sequence[tuple[str, str, str]],
                outputs: Sequence[tuple[str, str, str]],
                type_constraints: Sequence[tuple[str, Sequence[str], str]],
                attributes: Sequence[tuple[str, str, str]]) -> object:
    """An ``onnx.defs.OpSchema`` in the edgert domain.

    Args:
        inputs / outputs: ``(name, type_str, description)``.
        type_constraints: ``(type_str, allowed types, description)``.
        attributes: ``(name, "INT"|"FLOAT"|"INTS"..., description)``, all required.
    """
    from onnx import defs

    fp = defs.OpSchema.FormalParameter
    return defs.OpSchema(
        op_type, DOMAIN, OPSET_VERSION, doc,
        inputs=[fp(n, t, d) for n, t, d in inputs],
        outputs=[fp(n, t, d) for n, t, d in outputs],
        type_constraints=[(t, list(allowed), d) for t, allowed, d in type_constraints],
        attributes=[defs.OpSchema.Attribute(n, getattr(defs.OpSchema.AttrType, kind), d)
                    for n, kind, d in attributes],
    )


def register_schemas() -> None:
    """Register every edgert op with ONNX (checker, tools); safe to call more than once."""
    global _registered
    if _registered:
        return
    from onnx import defs

    for name in OP_MODULES:
        schema = importlib.import_module(f"edgert.ops.{name}").schema()
        if not defs.has(schema.name, schema.since_version, schema.domain):
            defs.register_schema(schema)
    _registered = True
