"""The inputs and outputs of a serialized ONNX model, read from the protobuf wire format with
the standard library only (no ``onnx``, no ``protobuf``).

A board bundle carries numpy and edgert's runtime but not onnx; :func:`graph_io` lets it check
an artifact's manifest against the graph inside all the same. The walk skips every field it
does not need (nodes, weights) by its length, so a model of hundreds of MB costs a few
milliseconds per thousand nodes and copies no weight bytes.

Only the fields used here are decoded (numbers are the ONNX protobuf field numbers):

    ModelProto      graph = 7
    GraphProto      initializer = 5, input = 11, output = 12, sparse_initializer = 15
    TensorProto     name = 8          SparseTensorProto  values = 1 (a TensorProto)
    ValueInfoProto  name = 1, type = 2
    TypeProto       tensor_type = 1   Tensor  elem_type = 1, shape = 2
    TensorShapeProto  dim = 1         Dimension  dim_value = 1, dim_param = 2

Anything malformed (a truncated varint, a length past the end, a wire type protobuf does not
have) raises :class:`WireError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

ELEM_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32",
               7: "int64", 9: "bool", 10: "float16", 11: "float64", 12: "uint32",
               13: "uint64"}
"""ONNX ``TensorProto.DataType`` -> numpy dtype name (the types an edgert I/O may have)."""

class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    """(value, position after it) of the varint at ``pos``."""
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise WireError("varint longer than 10 bytes")


def fields(buf: memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of each field of one message: an int for varints and
    fixed-width fields, a memoryview for length-delimited ones (no copy)."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1 or wire == 5:
            width = 8 if wire == 1 else 4
            if pos + width > len(buf):
                raise WireError("truncated fixed-width field")
            value, pos = int.from_bytes(buf[pos:pos + width], "little"), pos + width
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise WireError(f"field {number}: length {length} runs past the end")
            value, pos = buf[pos:pos + length], pos + length
        else:                                   # groups (3, 4) are not used by ONNX
            raise WireError(f"field {number}: unsupported wire type {wire}")
        yield number, wire, value


def _text(value: Any) -> str:
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise WireError("a name is not UTF-8") from None


def _submessages(buf: memoryview, number: int) -> Iterator[memoryview]:
    for n, wire, value in fields(buf):
        if n == number and wire == 2:
            yield value


def _tensor_name(tensor: memoryview) -> str:
    return next((_text(v) for n, w, v in fields(tensor) if n == 8 and w == 2), "")


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _value_info(buf: memoryview) -> dict[str, Any]:
    """``{"name", "shape", "dtype"}`` of a ValueInfoProto, as the compiler writes the manifest's
    entries (``dtype`` is None for a type edgert has no name for, or no tensor type)."""
    name, dtype, shape = "", None, None
    for n, wire, value in fields(buf):
        if n == 1 and wire == 2:
            name = _text(value)
        elif n == 2 and wire == 2:
            for tensor in _submessages(value, 1):
                for tn, tw, tv in fields(tensor):
                    if tn == 1 and tw == 0:
                        dtype = ELEM_DTYPES.get(tv)
                    elif tn == 2 and tw == 2:
                        shape = [_dim(d) for d in _submessages(tv, 1)]
    return {"name": name, "shape": [] if shape is None else shape, "dtype": dtype}


def _dim(buf: memoryview) -> int | str | None:
    dim: int | str | None = None
    for n, wire, value in fields(buf):
        if n == 1 and wire == 0:
            dim = _signed64(value)
        elif n == 2 and wire == 2:
            dim = _text(value)
    return dim


def graph_io(model: bytes) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The graph inputs (initializers left out, as older exporters list them too) and outputs
    of a serialized ``ModelProto``, each ``{"name", "shape", "dtype"}``.

    Raises:
        WireError: the bytes are not a ModelProto with a graph.
    """
    buf = memoryview(model)
    graphs = list(_submessages(buf, 7))
    if not graphs:
        raise WireError("no graph in the model")
    graph = graphs[-1]                         # protobuf: the last occurrence wins
    inits: set[str] = set()
    inputs, outputs = [], []
    for n, wire, value in fields(graph):
        if wire != 2:
            continue
        if n == 5:
            inits.add(_tensor_name(value))
        elif n == 15:
            inits.update(_tensor_name(v) for v in _submessages(value, 1))
        elif n == 11:
            inputs.append(_value_info(value))
        elif n == 12:
            outputs.append(_value_info(value))
    return [v for v in inputs if v["name"] not in inits], outputs
