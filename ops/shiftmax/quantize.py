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

from edgert.compiler.quantize import opset
from edgert.compiler.quantize.core import DEFAULT_ROW_LEN, ELEM, QTensor, Quantizer
from edgert.ops import DOMAIN
from edgert.ops.shiftmax import spec as shiftmax

ONNX_OPS = ("Softmax",)
SHIFTMAX_BITS = 16
"""Output bits k of the probabilities."""


def rule(q: Quantizer, node: onnx.NodeProto) -> None:
    """Softmax over the last axis -> Shiftmax (module docstring)."""
    if not opset.old_softmax_axis_ok(q, node):
        raise q.fail("a Softmax below opset 13 over more than the last axis (the input "
                     "flattened to 2-D from its axis on) has no integer form")
    x, exclude = node.input[0], []
    if x in q.masked:
        x, mask = q.masked[x]
        exclude = [mask]
    axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), -1)
    rank = len(q.shapes.get(x) or [])
    if axis not in (-1, rank - 1):
        _moved_axis(q, node, x, axis, rank, exclude)
        return
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


def _moved_axis(q: Quantizer, node: onnx.NodeProto, x: str, axis: int, rank: int,
                exclude: list[str]) -> None:
    """Softmax over another axis (a detector's distribution over box bins, axis 1): that axis
    swapped with the last by an integer ``Transpose``, Shiftmax, and swapped back. The row-sum
    bound runs along the moved axis, so the output carries none."""
    if exclude or rank < 2 or not -rank <= axis < rank:
        raise q.fail(f"Softmax over axis {axis} of a rank-{rank} tensor has no integer form")
    perm = list(range(rank))
    perm[axis % rank], perm[-1] = perm[-1], perm[axis % rank]
    t = q.need(x, "int8")
    moved = q.emit("Transpose", [t.name], x, ELEM["int8"], perm=perm)
    length = q.static_dim(x, axis) or DEFAULT_ROW_LEN
    try:
        p = shiftmax.params(float(t.scale), length, k=SHIFTMAX_BITS)
    except ValueError as e:
        raise q.fail(str(e)) from None
    dtype = shiftmax.out_dtype(SHIFTMAX_BITS)
    probs = q.emit("Shiftmax", [moved], node.output[0], ELEM[dtype], domain=DOMAIN, **p)
    out = q.emit("Transpose", [probs], node.output[0], ELEM[dtype], perm=perm)
    top = 1 << (SHIFTMAX_BITS - 1)
    q.q[node.output[0]] = QTensor(out, dtype, np.asarray(1.0 / top), bound=top - 1)
