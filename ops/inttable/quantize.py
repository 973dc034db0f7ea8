"""Quantizer rule: ONNX ``HardSigmoid``, ``HardSwish``, ``Sigmoid`` and ``Tanh`` ->
``edgert.IntTable``.

The table's input is int8: an int8 per-tensor tensor as it is (the table is made for its
scale), else a ``Requant`` to int8 at a scale that covers only the input range where the
function still changes (:func:`~edgert.ops.inttable.spec.saturated_range`: HardSigmoid's input
beyond +-3 is clamped by that Requant without changing any output). The output is int8 at the
output's calibrated scale, or int16 where a consumer wants the wide dtype or multiplies it with
another activation (SiLU's ``x * sigmoid(x)``, a squeeze-and-excitation gate).

``HardSwish(x) = x * HardSigmoid(x)`` is written that way: the gate from the table (int16 at
scale 1/32767), times ``x`` as int16, an exact int32 product that the consumer's ``Requant``
rounds once (:func:`edgert.compiler.quantize.arith.multiply`). Only the gate sees the int8
input's rounding, through a slope of 1/6: before the consumer's rounding the result is 8x
closer to fp32 than a table of ``hardswish`` itself on the int8 input. SiLU, exported as
``Mul(x, Sigmoid(x))``, gets the same form from the Sigmoid rule and the product rule (4x).
``tests/test_op_inttable.py`` measures both; ``docs/integer-onnx.md`` has the numbers.

Found through the op registry: ``ONNX_OPS`` names the op types, ``rule(q, node)`` writes the
integer form with the :class:`~edgert.compiler.quantize.core.Quantizer` ``q``.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from edgert.compiler.quantize.core import ELEM, QMAX, QTensor, Quantizer
from edgert.ops import DOMAIN
from edgert.ops.inttable.spec import OP_TYPE, float_function, make_table, saturated_range

ONNX_OPS = ("HardSigmoid", "HardSwish", "Sigmoid", "Tanh")
FUNCTION_OF = {"HardSigmoid": "hardsigmoid", "HardSwish": "hardswish", "Sigmoid": "sigmoid",
               "Tanh": "tanh"}


def _feeds_product(q: Quantizer, name: str) -> bool:
    """Whether a consumer of ``name`` multiplies it with another activation."""
    return any(c.op_type == "Mul" and all(i not in q.inits for i in c.input)
               for c in q.consumers.get(name, []))


def table_of(q: Quantizer, x: str, out: str, function: str, params: dict[str, float],
             dtype: str, s_out: float) -> QTensor:
    """``IntTable`` of ``function`` on ``x`` (int8, see the module docstring), output ``dtype``
    at scale ``s_out``; returns the output (not registered as any tensor's integer form)."""
    f = float_function(function, **params)
    have = q.q.get(x)
    if have is not None and have.dtype == "int8" and have.per_tensor:
        t = have
    else:
        amax = max(q.amax(x), 1e-12)
        a, b = saturated_range(f, -amax, amax, s_out, QMAX[dtype])
        t = q.need(x, "int8", scale=max(abs(a), abs(b), 1e-12) / QMAX["int8"])
    table = make_table(f, float(t.scale), s_out, dtype)
    new = q.emit(OP_TYPE, [t.name, q.const(table, f"{out}_table")], out, ELEM[dtype],
                 domain=DOMAIN, function=function)
    return QTensor(new, dtype, np.asarray(s_out), bound=int(np.abs(table.astype(np.int64)).max()))


def rule(q: Quantizer, node: onnx.NodeProto) -> None:
    """HardSigmoid / HardSwish / Sigmoid / Tanh -> IntTable (module docstring)."""
    from edgert.compiler.quantize.arith import multiply, per_tensor

    x, out = node.input[0], node.output[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    params = {k: float(attrs[k]) for k in ("alpha", "beta") if k in attrs}
    if node.op_type == "HardSwish":
        gate = table_of(q, x, out, "hardsigmoid", {"alpha": 1 / 6, "beta": 0.5}, "int16",
                        1.0 / QMAX["int16"])
        multiply(q, out, per_tensor(q, x), gate)
        return
    wide = _feeds_product(q, out) or q.downstream_dtype(out) == "int16"
    dtype = "int16" if wide else "int8"
    q.q[out] = table_of(q, x, out, FUNCTION_OF[node.op_type], params, dtype,
                        max(q.amax(out), 1e-12) / QMAX[dtype])
