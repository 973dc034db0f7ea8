"""Quantizer rule: ONNX ``LayerNormalization`` (last axis, constant scale and bias) ->
``edgert.ILayerNorm``, int32 output at ``output_scale(n) * gamma`` per channel. A channel whose
``beta / gamma`` exceeds ILayerNorm's bias range (a tiny gamma) gets its beta added after the
per-channel scale, on a fine int32 scale.

The rule is found through the op registry (``OP.quantize``, :func:`edgert.compiler.quantize.
rules.table`): ``ONNX_OPS`` names the ONNX op types it rewrites and ``rule(q, node)`` writes the
integer form of ``node`` with the :class:`~edgert.compiler.quantize.core.Quantizer` ``q`` (its
``need``, ``emit``, ``const``, ``fail``).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgert.compiler.quantize.core import ADD_EXTRA_BITS, INT32_MAX, QMAX, QTensor, Quantizer
from edgert.ops import DOMAIN
from edgert.ops.ilayernorm import spec as ilayernorm

ONNX_OPS = ("LayerNormalization",)


def rule(q: Quantizer, node: onnx.NodeProto) -> None:
    """LayerNormalization -> ILayerNorm (module docstring)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    x = node.input[0]
    rank = len(q.shapes.get(x) or [])
    if attrs.get("axis", -1) not in (-1, rank - 1):
        raise q.fail("LayerNormalization over more than the last axis")
    n = q.static_dim(x, -1)
    if n is None or node.input[1] not in q.inits:
        raise q.fail("LayerNormalization needs a static channel count and constant scale")
    gamma = np.broadcast_to(np.asarray(q.inits[node.input[1]], np.float64), (n,))
    beta = np.zeros(n)
    if len(node.input) > 2 and node.input[2]:
        beta = np.broadcast_to(np.asarray(q.inits[node.input[2]], np.float64), (n,))
    t = q.need(x, q.wide())
    # A channel whose beta/gamma exceeds ILayerNorm's bias range (a tiny gamma) gets its
    # beta added after the per-channel scale is applied, on a fine int32 scale.
    late = ~ilayernorm.bias_fits(beta, gamma, n)
    try:
        bias = ilayernorm.fold_beta(np.where(late, 0.0, beta), gamma, n)
    except ValueError as e:
        raise q.fail(str(e)) from None
    out = node.output[0]
    acc = q.emit("ILayerNorm", [t.name, q.const(bias, f"{out}_beta")], out,
                 TensorProto.INT32, domain=DOMAIN)
    res = QTensor(acc, "int32", ilayernorm.output_scale(n) * gamma, bound=INT32_MAX)
    if late.any():
        s_out = max(q.amax(out), 1e-12) / QMAX[q.wide()] / 2**ADD_EXTRA_BITS
        fine = q.requant_to_int32(res, s_out, (1 << 30) - 1)
        late_q = np.where(late, np.rint(beta / s_out), 0).astype(np.int64)
        acc = q.emit("Add", [fine.name, q.const(late_q.astype(np.int32), f"{out}_late_beta")],
                     out, TensorProto.INT32)
        res = QTensor(acc, "int32", np.asarray(s_out), bound=fine.bound + int(np.abs(late_q).max()))
    q.q[out] = res
