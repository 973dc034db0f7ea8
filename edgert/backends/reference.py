"""The numpy reference executor of integer ONNX graphs (``docs/integer-onnx.md``).

``onnx.reference.ReferenceEvaluator`` runs the standard ops (QuantizeLinear, DequantizeLinear,
MatMulInteger, ConvInteger, Add and the shape ops); the edgert-domain ops run through the
normative ``reference`` function of their module under ``ops/``. This is the slow, obviously
correct executor every backend is checked against, bit for bit.

Known difference from the contract (``onnx.reference`` 1.23): ``QuantizeLinear`` casts
``rint(x / scale)`` to int32 *before* it saturates, so a quotient outside int32 (``|x / scale|
>= 2**31``, +-inf, NaN) becomes whatever the CPU's float->int32 conversion gives (INT32_MIN
on x86-64, so +inf quantizes to -128) instead of saturating. Feed it quotients inside int32.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx.helper import tensor_dtype_to_np_dtype
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from edgert.ops import DOMAIN, ilayernorm, intmatmul, requant, shiftgelu, shiftmax


class Requant(OpRun):
    """``edgert.Requant(q, multiplier, shift)``; ``to`` is a TensorProto enum in ONNX."""

    op_domain = DOMAIN

    def _run(self, q, multiplier, shift, to=None, lo=None, hi=None, axis=None):  # noqa: D102
        name = tensor_dtype_to_np_dtype(int(to)).name
        return (requant.reference(q, multiplier, shift, lo=int(lo), hi=int(hi), to=name,
                                  axis=int(axis)),)


class Shiftmax(OpRun):
    """``edgert.Shiftmax(q, exclude?)`` over the last axis."""

    op_domain = DOMAIN

    def _run(self, q, exclude=None, x0=None, n=None, k=None):  # noqa: D102
        return (shiftmax.reference(q, exclude, x0=int(x0), n=int(n), k=int(k)),)


class ShiftGELU(OpRun):
    """``edgert.ShiftGELU(q) -> int32``."""

    op_domain = DOMAIN

    def _run(self, q, x0=None, n=None):  # noqa: D102
        return (shiftgelu.reference(q, x0=int(x0), n=int(n)),)


class ILayerNorm(OpRun):
    """``edgert.ILayerNorm(x[, bias]) -> int32`` over the last axis."""

    op_domain = DOMAIN

    def _run(self, x, bias=None):  # noqa: D102
        return (ilayernorm.reference(x, bias),)


class IntMatMul(OpRun):
    """``edgert.IntMatMul(A, B) -> int32``."""

    op_domain = DOMAIN

    def _run(self, a, b):  # noqa: D102
        return (intmatmul.reference(a, b),)


class LutMatMul(OpRun):
    """``edgert.LutMatMul(A, W, scales?, zero_points?)`` (low-bit weights by table lookup)."""

    op_domain = DOMAIN

    def _run(self, a, w, scales=None, zero_points=None, bits=None, g=None,  # noqa: D102
             group_size=None, K=None, N=None, tile_n=None, tile_k=None,  # noqa: N803
             layout_version=None, table_bits=None, dequant=None):
        from edgert.ops import lutmatmul

        layout = lutmatmul.LutLayout.from_attrs(dict(
            bits=bits, g=g, group_size=group_size, K=K, N=N, tile_n=tile_n, tile_k=tile_k,
            layout_version=layout_version))
        return (lutmatmul.reference(a, w, scales, zero_points, layout=layout,
                                    table_bits=int(table_bits), dequant=bool(dequant)),)


EDGERT_OPS: tuple[type[OpRun], ...] = (Requant, Shiftmax, ShiftGELU, ILayerNorm, IntMatMul,
                                       LutMatMul)


def reference_evaluator(model: onnx.ModelProto) -> ReferenceEvaluator:
    """A ``ReferenceEvaluator`` for ``model`` that knows the edgert ops (reusable across runs)."""
    return ReferenceEvaluator(model, new_ops=list(EDGERT_OPS))


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
