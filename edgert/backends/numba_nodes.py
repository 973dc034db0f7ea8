"""What the numba backend knows of one ONNX node while it prepares a handler for it.

A handler factory takes a :class:`Node` (the node, its label, its inputs that are constants at
load) and returns a :data:`Handler`, or raises :class:`Unsupported` for an attribute value or
input form the backend does not run (reported with every other such node at once).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgert.errors import ModelError

Handler = Callable[..., Sequence[np.ndarray]]
"""A node at run time: input arrays (``None`` for an absent optional input) -> output arrays."""
Factory = Callable[["Node"], Handler]
"""A node at load -> its handler."""

REQUIRED = object()


class Unsupported(Exception):
    """A supported op with an attribute value or input form this backend does not handle."""


@dataclass
class Node:
    """One ONNX node at load: ``proto``, ``label`` (for messages) and ``consts``, the value of
    each input known at load (``None`` where it is computed at run time)."""

    proto: onnx.NodeProto
    label: str
    consts: list[np.ndarray | None]

    def attr(self, name: str, default: Any = REQUIRED) -> Any:
        for a in self.proto.attribute:
            if a.name == name:
                if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS,
                              onnx.AttributeProto.SPARSE_TENSOR):
                    kind = onnx.AttributeProto.AttributeType.Name(a.type)
                    raise Unsupported(f"a {kind} attribute {name!r}")
                value = helper.get_attribute_value(a)
                if isinstance(value, onnx.TensorProto):
                    return numpy_helper.to_array(value)
                return value.decode() if isinstance(value, bytes) else value
        if default is REQUIRED:
            raise ModelError(f"node {self.label} ({self.proto.op_type}) lacks attribute {name!r}")
        return default

    def attributes(self) -> dict[str, Any]:
        """Every attribute of the node, name -> value (as :meth:`attr` converts it)."""
        return {a.name: self.attr(a.name) for a in self.proto.attribute}

    def has_input(self, i: int) -> bool:
        return len(self.proto.input) > i and bool(self.proto.input[i])

    def zero_point(self, i: int) -> int | None:
        """The constant scalar zero point at input ``i``: None when absent or 0."""
        if not self.has_input(i):
            return None
        value = self.consts[i]
        if value is None or value.size != 1:
            raise Unsupported("a zero point that is not a constant scalar")
        return int(value.reshape(())) or None
