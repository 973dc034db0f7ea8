"""Load an ONNX model, validate it, infer shapes, and check that every op can be compiled.

All problems are reported with the file they come from; unsupported operators are collected
over the whole graph (subgraphs included) and reported together, never just the first.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sized
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgert.errors import InputError, ModelError, UnsupportedOpError, UnsupportedOpsetError
from edgert.onnx_graph import iter_nodes, node_label
from edgert.ops import register_schemas_for

DEFAULT_DOMAINS = ("", "ai.onnx")
MIN_OPSET = 7
"""Below opset 7 elementwise ops broadcast only through their ``broadcast``/``axis``
attributes, which TVM's importer does not read: such a model would compile to wrong results.
``onnx.version_converter.convert_version(model, 17)`` upgrades one."""


def max_opset() -> int:
    """The newest default-domain opset this installation knows (the onnx package's)."""
    return onnx.defs.onnx_opset_version()


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
    if path.is_dir():
        raise ModelError(f"{path}: is a directory, not an ONNX model file")
    if not path.exists():
        raise ModelError(f"{path}: no such model file")
    if not path.is_file():
        raise ModelError(f"{path}: not a regular file")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ModelError(f"{path}: cannot be read ({e.strerror})") from None
    if size == 0:
        raise ModelError(f"{path}: empty file (0 bytes), not an ONNX model")
    try:
        model = onnx.load(str(path))
    except PermissionError as e:
        raise ModelError(f"{path}: cannot be read ({e.strerror})") from None
    except Exception as e:
        raise ModelError(f"{path}: not a readable ONNX model ({_first_line(e)})") from None
    if not model.HasField("graph") or not model.ir_version:
        raise ModelError(f"{path}: not an ONNX model (no graph or no IR version: "
                         "a truncated file or another format)")
    check_opset(model, source=str(path))
    return validate_model(model, source=str(path))


def check_opset(model: onnx.ModelProto, source: str = "model") -> None:
    """Refuse a default-domain opset outside ``[MIN_OPSET, max_opset()]`` (or none at all).

    Raises:
        UnsupportedOpsetError: naming the opset and the supported range.
    """
    versions = [o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS]
    supported = f"edgert compiles opsets {MIN_OPSET} to {max_opset()}"
    if not versions:
        raise UnsupportedOpsetError(f"{source}: the model imports no default-domain (ai.onnx) "
                                    f"opset; {supported}")
    version = max(versions)
    if version < MIN_OPSET:
        raise UnsupportedOpsetError(
            f"{source}: opset {version} is too old ({supported}); upgrade it with "
            f"onnx.version_converter.convert_version(model, 17) or re-export")
    if version > max_opset():
        raise UnsupportedOpsetError(
            f"{source}: opset {version} is newer than this installation knows ({supported}, "
            f"onnx {onnx.__version__}); re-export with an older opset")


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


SHAPE_OPERANDS = {"Reshape": 1, "Expand": 1, "Tile": 1, "ConstantOfShape": 0}
"""Ops whose operand at this position is a shape that TVM needs to know from the input shapes
alone (a Relax ``Shape``), never from the values flowing through the graph."""


def require_static_shape_operands(model: onnx.ModelProto, source: str = "model") -> None:
    """Refuse a model whose Reshape/Expand/Tile/ConstantOfShape takes its shape operand from
    the *values* of a graph input (not from input shapes through ``Shape``/``Size``): such a
    shape is known only at run time, per call, and cannot be compiled (``--input-shape``
    cannot fix it either). The whole graph is checked; all such nodes are named at once.

    Raises:
        ModelError: naming the nodes and the inputs whose values decide their shapes.
    """
    inits = {t.name for t in model.graph.initializer}
    origin: dict[str, set[str]] = {v.name: {v.name} for v in model.graph.input
                                   if v.name not in inits}
    bad = []
    for i, node in enumerate(model.graph.node):
        if node.op_type in ("Shape", "Size"):
            continue                            # shape-only: values do not flow through
        sources = set().union(*(origin.get(name, set()) for name in node.input))
        slot = SHAPE_OPERANDS.get(node.op_type)
        if (slot is not None and len(node.input) > slot and node.input[slot] in origin
                and node.domain in DEFAULT_DOMAINS):
            bad.append(f"{node_label(node, i)} ({node.op_type}) from the values of "
                       f"{', '.join(sorted(origin[node.input[slot]]))}")
        if sources:
            for out in node.output:
                origin[out] = sources
    if bad:
        raise ModelError(f"{source}: dynamic shapes that cannot be resolved at compile time: "
                         f"{'; '.join(bad)} (a shape must follow from the input shapes; "
                         "export the model with that shape fixed or computed by Shape)")


def finite_samples(feeds: Any) -> Any:
    """Calibration ``feeds`` (a dict, a list of dicts or an iterable of them) with every float
    array checked for NaN and +-inf: a list is checked now, an iterable lazily as it is read.
    A non-finite sample would make every range it reaches NaN or inf, and the quantizer fail
    far from the cause. A list (or dict) is also checked for a float input that is 0 in every
    sample (a zero range).

    Raises:
        InputError: naming the sample (feed position), the input and the first bad index; or
            the inputs whose range is 0.
    """
    if isinstance(feeds, Mapping) or isinstance(feeds, Sized):
        listed = [feeds] if isinstance(feeds, Mapping) else list(feeds)
        for i, feed in enumerate(listed):
            _check_finite_feed(feed, i)
        _check_nonzero_range(listed)
        return feeds
    return (_check_finite_feed(feed, i) for i, feed in enumerate(feeds))


def _check_nonzero_range(feeds: list[Any]) -> None:
    """Refuse a float input that is 0 in every sample: its range would be 0, its scale the
    smallest there is, and any real input would saturate (the outputs then come out near 0:
    a confident wrong answer, measured before this check)."""
    peak: dict[str, float] = {}
    for feed in feeds:
        if not isinstance(feed, Mapping):
            return                           # the calibration reports malformed feeds
        for name, value in feed.items():
            a = np.asarray(value)
            if a.dtype.kind == "f":
                peak[name] = max(peak.get(name, 0.0), float(np.abs(a).max()) if a.size else 0.0)
    zero = [name for name, p in peak.items() if p == 0.0]
    if zero and any(a.size for f in feeds for a in map(np.asarray, f.values())):
        raise InputError(
            f"calibration data: float input(s) {', '.join(map(repr, zero))} are 0 in every "
            "sample (range 0): the integer scale would be meaningless and every real input "
            "saturate; calibrate on typical inputs")


def _check_finite_feed(feed: Any, position: int) -> Any:
    from edgert.session import nonfinite

    if isinstance(feed, Mapping):
        for name, value in feed.items():
            found = nonfinite(np.asarray(value))
            if found is not None:
                raise InputError(
                    f"calibration data (feed {position}): input {name!r} holds {found[0]} "
                    f"non-finite value(s) (NaN or +-inf), the first at index {found[1]} "
                    "(axis 0: the sample); ranges would be NaN or inf: drop or fix them")
    return feed


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]
