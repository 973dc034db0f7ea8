"""Quantizer rule: ONNX ``Gelu`` -> ``edgert.ShiftGELU`` on the wide dtype (int16, or int8
with ``act_bits="8"``); int32 output at the input scale times 2^-7.

The rule is found through the op registry (``OP.quantize``, :func:`edgert.compiler.quantize.
rules.table`): ``ONNX_OPS`` names the ONNX op types it rewrites and ``rule(q, node)`` writes the
integer form of ``node`` with the :class:`~edgert.compiler.quantize.core.Quantizer` ``q`` (its
``need``, ``emit``, ``const``, ``fail``).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from edgert.compiler.quantize.core import QTensor, Quantizer
from edgert.ops import DOMAIN
from edgert.ops.shiftgelu import spec as shiftgelu

ONNX_OPS = ("Gelu",)


def rule(q: Quantizer, node: onnx.NodeProto) -> None:
    """Gelu -> ShiftGELU (module docstring)."""
    t = q.need(node.input[0], q.wide())
    try:
        p = shiftgelu.params(float(t.scale))
    except ValueError as e:
        raise q.fail(str(e)) from None
    out = q.emit("ShiftGELU", [t.name], node.output[0], TensorProto.INT32, domain=DOMAIN, **p)
    q.q[node.output[0]] = QTensor(out, "int32", np.asarray(float(t.scale) * 2.0**-7),
                                  bound=t.bound * 127)
