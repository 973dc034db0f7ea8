"""The numpy reference executor of integer ONNX graphs (``docs/integer-onnx.md``).

``onnx.reference.ReferenceEvaluator`` runs the standard ops (QuantizeLinear, DequantizeLinear,
MatMulInteger, ConvInteger, Add and the shape ops); the edgert-domain ops run through the
normative ``reference`` of their op folder (``ops/<name>/spec.py``, found by
:mod:`edgert.ops.registry`). This is the slow, obviously correct executor every backend is
checked against, bit for bit.

Known difference from the contract (``onnx.reference`` 1.23): ``QuantizeLinear`` casts
``rint(x / scale)`` to int32 *before* it saturates, so a quotient outside int32 (``|x / scale|
>= 2**31``, +-inf, NaN) becomes whatever the CPU's float->int32 conversion gives (INT32_MIN
on x86-64, so +inf quantizes to -128) instead of saturating. Feed it quotients inside int32.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from edgert.ops import DOMAIN
from edgert.ops._common.op import Op


def op_run_class(op: Op) -> type[OpRun]:
    """An ``OpRun`` class named ``op.name`` in the edgert domain whose ``_run`` is
    ``op.reference(*inputs, **op.node_kwargs(attributes))``."""

    def _run(self: OpRun, *inputs: np.ndarray, **attributes: Any) -> tuple[np.ndarray]:
        return (op.reference(*inputs, **op.node_kwargs(attributes)),)

    return type(op.name, (OpRun,), {"op_domain": DOMAIN, "_run": _run,
                                    "__doc__": f"``edgert.{op.name}`` on its numpy spec."})


def edgert_op_classes() -> list[type[OpRun]]:
    """One ``OpRun`` class per op of :mod:`edgert.ops.registry` (built once)."""
    global _CLASSES
    if _CLASSES is None:
        from edgert.ops import registry

        _CLASSES = [op_run_class(op) for op in registry.all()]
    return list(_CLASSES)


_CLASSES: list[type[OpRun]] | None = None


def reference_evaluator(model: onnx.ModelProto) -> ReferenceEvaluator:
    """A ``ReferenceEvaluator`` for ``model`` that knows the edgert ops (reusable across runs)."""
    return ReferenceEvaluator(model, new_ops=edgert_op_classes())


def run_reference(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run an integer ONNX graph with the numpy reference semantics.

    Args:
        model: the graph (default opset 21 and ``edgert`` opset 1, as the compiler writes it).
        feeds: graph input name -> array of the declared dtype.

    Returns:
        The graph outputs, in graph order, as numpy arrays.
    """
    outputs = reference_evaluator(model).run(None, dict(feeds))
    return [np.asarray(o) for o in outputs]
