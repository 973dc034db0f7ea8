"""Load an ONNX model, validate it, infer shapes, and check that every op can be compiled.

All problems are reported with the file they come from; unsupported operators are collected
over the whole graph (subgraphs included) and reported together, never just the first.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import onnx

from edgert.errors import ModelError, UnsupportedOpError
from edgert.onnx_graph import iter_nodes, node_label
from edgert.ops import register_schemas_for

DEFAULT_DOMAINS = ("", "ai.onnx")


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX file, run the ONNX checker and shape inference.

    Raises:
        ModelError: the file is missing, not ONNX, fails the checker or shape inference.
    """
    return check_model(read_model(path), source=str(path))


def read_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX file and run the ONNX checker (no shape inference).

    Raises:
        ModelError: the file is missing, not ONNX or fails the checker.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    try:
        model = onnx.load(str(path))
    except Exception as e:
        raise ModelError(f"{path}: not a readable ONNX model ({_first_line(e)})") from None
    return validate_model(model, source=str(path))


def validate_model(model: onnx.ModelProto, source: str = "model") -> onnx.ModelProto:
    """Run the ONNX checker on an in-memory model (edgert op schemas registered first when
    the model uses them); returns the model. Raises ModelError."""
    register_schemas_for(model)
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        raise ModelError(f"{source}: the ONNX checker rejects the model: {_first_line(e)}") from None
    return model


def check_model(model: onnx.ModelProto, source: str = "model") -> onnx.ModelProto:
    """Run the ONNX checker and strict shape inference on an in-memory model (edgert op
    schemas registered first when the model uses them)."""
    validate_model(model, source)
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=False,
                                                 data_prop=True)
    except Exception as e:
        raise ModelError(f"{source}: shape inference failed: {_first_line(e)}") from None


def require_supported(model: onnx.ModelProto, supported: Iterable[tuple[str, str]],
                      source: str = "model") -> None:
    """Raise one :class:`UnsupportedOpError` listing every node whose op is not supported.

    Args:
        supported: ``(domain, op_type)`` pairs; the default domain is ``""``.
    """
    known = {(("" if d in DEFAULT_DOMAINS else d), op) for d, op in supported}
    bad = []
    for i, node in enumerate(iter_nodes(model.graph)):
        domain = "" if node.domain in DEFAULT_DOMAINS else node.domain
        if (domain, node.op_type) not in known:
            op = node.op_type if not domain else f"{domain}.{node.op_type}"
            bad.append((op, node_label(node, i)))
    if bad:
        raise UnsupportedOpError(bad, source=source)


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]
