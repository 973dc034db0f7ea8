"""Stage ``check``: the ONNX file -> a checked, shape-inferred fp32 :class:`Graph`, with the
``--input-shape`` dims fixed and shape subgraphs folded (:mod:`edgert.compiler.fold`)."""

from __future__ import annotations

import os

from edgert.compiler.check import check_model, read_model, require_static_shape_operands
from edgert.compiler.fold import fold_model
from edgert.compiler.stages import Context, Graph


def check(model_path: str | os.PathLike, ctx: Context) -> Graph:
    """Load ``model_path`` and run the ONNX checker; fix the dims of ``--input-shape`` and
    fold what is known at compile time (:func:`edgert.compiler.fold.fold_model`: shape
    arithmetic, so that no shape-derived float math remains and TVM sees static shapes where
    they are); then the checker and shape inference again (every op's support is checked
    later, by :func:`edgert.compiler.stages.lower.lower`, on the final graph).

    Raises:
        ModelError: a file that is missing, a directory, empty, not ONNX or rejected by the
            checker; a shape operand computed from input values (dynamic shapes that cannot
            be resolved).
        UnsupportedOpsetError: an opset outside the supported range.
        InputError: an ``--input-shape`` that names no input, or whose rank or static dims
            differ from the model's.
    """
    ctx.stage("checking the model")
    model = read_model(model_path)
    folded, _report = fold_model(model, ctx.options.input_shape_map, source=ctx.source)
    require_static_shape_operands(folded, source=ctx.source)
    return Graph(check_model(folded, source=ctx.source))
