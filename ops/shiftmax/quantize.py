"""Quantizer rule: ONNX ``Softmax`` (last axis) -> ``edgert.Shiftmax``.

The input is asked for as int8 at its calibrated scale; a scores bias ``mask * C`` added before
the Softmax (recorded by the Add rule) becomes Shiftmax's ``exclude`` input. The output is a
16-bit probability (k = 16, scale 2^-15) whose row sums are bounded by ``2^15 + row length``,
which the following activation MatMul uses for its int32 bound.

The rule is found through the op registry (``OP.quantize``, :func:`edgert.compiler.quantize.
rules.table`): ``ONNX_OPS`` names the ONNX op types it rewrites and ``rule(q, node)`` writes the
integer form of ``node`` with the :class:`~edgert.compiler.quantize.core.Quantizer` ``q`` (its
``need``, ``emit``, ``const``, ``fail``).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from edgert.compiler.quantize.core import DEFAULT_ROW_LEN, ELEM, QTensor, Quantizer
from edgert.ops import DOMAIN
from edgert.ops.shiftmax import spec as shiftmax

ONNX_OPS = ("Softmax",)
SHIFTMAX_BITS = 16
"""Output bits k of the probabilities."""


def rule(q: Quantizer, node: onnx.NodeProto) -> None:
    """Softmax over the last axis -> Shiftmax (module docstring)."""
    x, exclude = node.input[0], []
    if x in q.masked:
        x, mask = q.masked[x]
        exclude = [mask]
    axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), -1)
    rank = len(q.shapes.get(x) or [])
    if axis not in (-1, rank - 1):
        raise q.fail(f"Softmax over axis {axis}; only the last axis is supported")
    t = q.need(x, "int8")
    length = q.static_dim(x, -1) or DEFAULT_ROW_LEN
    try:
        p = shiftmax.params(float(t.scale), length, k=SHIFTMAX_BITS)
    except ValueError as e:
        raise q.fail(str(e)) from None
    dtype = shiftmax.out_dtype(SHIFTMAX_BITS)
    out = q.emit("Shiftmax", [t.name, *exclude], node.output[0], ELEM[dtype], domain=DOMAIN,
                 **p)
    top = 1 << (SHIFTMAX_BITS - 1)
    q.q[node.output[0]] = QTensor(out, dtype, np.asarray(1.0 / top), bound=top - 1,
                                  row_sum=top + length)
