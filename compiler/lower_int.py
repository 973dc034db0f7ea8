"""ONNX -> Relax converters for the integer graph (``docs/integer-onnx.md``).

TVM's ONNX frontend looks converters up by ``op_type`` alone in the module function
``onnx_frontend._get_convert_map()``. :func:`integer_converters` swaps that function, for the
duration of one import, for one returning TVM's map plus ours:

- every edgert op of :mod:`edgert.ops.registry`, on its folder's converter (``op.converter``,
  in ``ops/<name>/tvm.py``: usually ``call_tir`` of its TE compute);
- the default-domain ops of :mod:`edgert.compiler.standard_int_converters` (``MatMulInteger``,
  ``ConvInteger``, ``QuantizeLinear``, ``DequantizeLinear``, ``Gather``).

The domain of a node is not seen by the frontend: :func:`supported_ops` pairs each converter
with its domain so that the model check rejects e.g. a ``Requant`` outside ``edgert``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from edgert.ops import DOMAIN

STANDARD_OPS = ("MatMulInteger", "ConvInteger", "QuantizeLinear", "DequantizeLinear", "Gather")
"""Default-domain ops converted here instead of (or in the absence of) TVM's converters."""


def edgert_ops() -> list[str]:
    """The edgert op types converted here: every op of the registry."""
    from edgert.ops import registry

    return registry.names()


def emit_int_matmul(bb: Any, a: Any, b: Any, name: str = "matmul_integer") -> Any:
    """``a @ b`` (int8/int16 operands, int32 out) emitted on the IntMatMul compute, marked for
    :mod:`edgert.compiler.schedule_intmatmul` (:func:`edgert.ops.intmatmul.tvm.emit_int_matmul`)."""
    from edgert.ops.intmatmul.tvm import emit_int_matmul as emit

    return emit(bb, a, b, name)


_lock = threading.RLock()


def supported_ops() -> frozenset[tuple[str, str]]:
    """``(domain, op_type)`` pairs this module adds to TVM's frontend."""
    return frozenset([(DOMAIN, op) for op in edgert_ops()] + [("", op) for op in STANDARD_OPS])


@contextlib.contextmanager
def integer_converters() -> Iterator[None]:
    """Within the block, TVM's ONNX frontend also knows the converters of this module.

    Re-entrant and serialized by a lock (the frontend's map is module state).
    """
    from tvm.relax.frontend.onnx import onnx_frontend

    with _lock:
        original = onnx_frontend._get_convert_map

        def convert_map() -> dict[str, Any]:
            return {**original(), **_converters()}

        onnx_frontend._get_convert_map = convert_map
        try:
            yield
        finally:
            onnx_frontend._get_convert_map = original


def _converters() -> dict[str, Any]:
    """op_type -> converter class (built once; needs TVM)."""
    global _CONVERTERS
    if _CONVERTERS is None:
        _CONVERTERS = _make_converters()
    return _CONVERTERS


_CONVERTERS: dict[str, Any] | None = None


def _make_converters() -> dict[str, Any]:
    """op_type -> converter class: the registry's edgert ops, then the standard ones."""
    from edgert.compiler.standard_int_converters import CONVERTERS
    from edgert.ops import registry

    return {**{op.name: op.converter for op in registry.all()}, **CONVERTERS}
