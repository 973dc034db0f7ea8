"""The edgert op set: one module per op (numpy reference, numba kernel, TVM compute, schema).

Custom ops live in the ONNX domain :data:`DOMAIN`. Each op module defines ``OP_TYPE``,
``reference`` (normative numpy), ``numba_kernel``, ``te_compute`` and ``schema()``. The fp32
path uses standard ONNX ops only; the integer-only and low-bit ops are added by their issues.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

DOMAIN = "edgert"
OPSET_VERSION = 1
OP_MODULES = ("requant", "shiftmax", "shiftgelu", "ilayernorm", "intmatmul", "lutmatmul")

_registered = False


def make_schema(op_type: str, doc: str, inputs: Sequence[tuple[str, str, str]],
                outputs: Sequence[tuple[str, str, str]],
                type_constraints: Sequence[tuple[str, Sequence[str], str]],
                attributes: Sequence[tuple[str, str, str]],
                infer: Callable[[Any], None] | None = None,
                optional_attributes: Sequence[tuple[str, str, str]] = ()) -> object:
    """An ``onnx.defs.OpSchema`` in the edgert domain.

    Args:
        inputs / outputs: ``(name, type_str, description)``; a name ending in ``?`` is optional.
        type_constraints: ``(type_str, allowed types, description)``.
        attributes: ``(name, "INT"|"FLOAT"|"INTS"..., description)``, all required.
        infer: type and shape inference function (``onnx`` InferenceContext -> None).
        optional_attributes: like ``attributes``, not required (the op says its default).
    """
    from onnx import defs

    def param(name: str, type_str: str, desc: str) -> object:
        option = defs.OpSchema.FormalParameterOption
        opt = name.endswith("?")
        return defs.OpSchema.FormalParameter(
            name.rstrip("?"), type_str, desc, param_option=option.Optional if opt else option.Single)

    schema = defs.OpSchema(
        op_type, DOMAIN, OPSET_VERSION, doc,
        inputs=[param(*i) for i in inputs],
        outputs=[param(*o) for o in outputs],
        type_constraints=[(t, list(allowed), d) for t, allowed, d in type_constraints],
        attributes=[defs.OpSchema.Attribute(n, getattr(defs.OpSchema.AttrType, kind), d)
                    for n, kind, d in attributes]
        + [defs.OpSchema.Attribute(n, getattr(defs.OpSchema.AttrType, kind), d, required=False)
           for n, kind, d in optional_attributes],
    )
    if infer is not None:
        schema.set_type_and_shape_inference_function(infer)
    return schema


def same_shape_output(elem_type: int | Callable[[Any], int]) -> Callable[[Any], None]:
    """Inference function: output 0 has input 0's shape and element type ``elem_type``
    (a TensorProto type, or a function of the ONNX InferenceContext returning one)."""

    def infer(ctx: Any) -> None:
        import onnx

        in_type = ctx.get_input_type(0)
        if in_type is None or not in_type.HasField("tensor_type"):
            return
        out = onnx.TypeProto()
        out.CopyFrom(in_type)
        out.tensor_type.elem_type = elem_type(ctx) if callable(elem_type) else elem_type
        ctx.set_output_type(0, out)

    return infer


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


def register_schemas_for(model: Any) -> None:
    """Register the edgert op schemas when ``model`` (an ``onnx.ModelProto``) imports the edgert
    domain: the checker and shape inference need them. Importing the op modules costs numba's
    import, so models without edgert ops skip it."""
    if any(o.domain == DOMAIN for o in model.opset_import):
        register_schemas()
