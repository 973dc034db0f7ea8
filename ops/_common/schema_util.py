"""Helpers for the op folders' ``schema.py``: an ``onnx.defs.OpSchema`` in the edgert domain
and the common inference function. ``onnx`` is imported when a schema is built, not before."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from edgert.ops import DOMAIN, OPSET_VERSION


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
