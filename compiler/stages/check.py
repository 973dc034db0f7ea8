"""Stage ``check``: the ONNX file -> a checked, shape-inferred fp32 :class:`Graph`."""

from __future__ import annotations

import os

from edgert.compiler.check import load_model
from edgert.compiler.stages import Context, Graph


def check(model_path: str | os.PathLike, ctx: Context) -> Graph:
    """Load ``model_path``, run the ONNX checker and shape inference (every op's support is
    checked later, by :func:`edgert.compiler.stages.lower.lower`, on the final graph).

    Raises:
        ModelError: a file that is not a valid ONNX model.
    """
    ctx.stage("checking the model")
    return Graph(load_model(model_path))
