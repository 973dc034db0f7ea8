"""The quantizer: an fp32 ONNX graph plus calibrated ranges -> the integer ONNX graph.

The result follows ``docs/integer-onnx.md``. Every float tensor of the input graph is carried as
a :class:`QTensor` (an integer tensor with a scale). Scales change only through ``Requant``, and
lazily: a producer leaves its int32 accumulator as it is, and each consumer asks
(:meth:`Quantizer.need`) for the dtype and scale it wants, so a Linear feeding a residual add is
requantized once, straight to the add's scale.

Activation dtypes follow one documented policy (``act_bits``):
- ``"auto"`` (default; the post-training recipe of ``docs/methods/ivit.md``): int16 for the
  residual stream, LayerNorm and GELU inputs, and the two FFN Linear inputs (a Linear whose
  output feeds a GELU, or whose input comes from one); int8 for other Linear inputs, Q/K/V,
  attention scores (Shiftmax input) and convolutions.
- ``"linear8"``: as ``auto``, but every Linear input int8 (the FFN ones too), so every matmul
  with a constant weight is int8 x int8 (on rpi5 the ``sdot`` kernel; int16 operands stay on
  the generic compute there); the residual stream, LayerNorm and GELU inputs stay int16.
  ``benchmarks/bench_int.py --act-bits`` reports each policy's accuracy (``docs/benchmarks.md``).
- ``"8"``: int8 everywhere (I-ViT as published).  ``"16"``: int16 wherever an op allows it
  (all Linear inputs and the residual stream; attention operands and convolutions stay int8).
Shiftmax outputs are 16-bit probabilities (k = 16).

Integer-valued float tensors: a ``Cast`` from an integer tensor (attention masks) is carried
exactly (scale 1, int32, clamped to its calibrated range) with a proven interval; ``Sub``,
``Mul``, ``ReduceSum``, ``Clip`` and ``Div`` on such tensors stay integer, which makes the
mean pooling ``sum(x * mask) / max(sum(mask), eps)`` integer (the division truncates: at most
one unit of the output scale). A scores bias ``mask * C`` with ``C <= -10000`` added before a
Softmax becomes Shiftmax's ``exclude`` input (fp32 ``exp(-10000)`` is exactly 0 as well), and so
does PyTorch's ``masked_fill`` bias ``Where(mask, -inf, 0)`` through the reshapes between it and
the scores (:mod:`.masks`).

Range checks at compile time: every int32 accumulator is bounded from the integer weights and
the activation range (:func:`edgert.ops.intmatmul.accumulator_bound`); when the bound fails
the activation range is narrowed (the Requant clamps to a smaller ``qmax``), never overflowed.

Low-bit weights (``lowbit``, from :mod:`edgert.compiler.lowbit`): the Linears it names become
``LutMatMul(x: int8, packed W, , [zero_points])`` (exact int16 tables): their input is int8
whatever ``act_bits`` says, the accumulator is ``x @ 2 (u - z)`` at scale ``s_x * s_w[n] / 2``
(one weight scale per column, folded by the consumer's Requant), bias and bounds as for int8
weights. Without ``lowbit`` nothing changes.

Graph I/O (``io``):
- ``"float"`` (default): float graph inputs are quantized inside the graph (``QuantizeLinear``
  where a consumer needs them) and float outputs dequantized (``DequantizeLinear``).
- ``"int8"`` ("integer I/O"): each float graph input becomes an integer input (int8 or int16:
  the widest dtype its consumers want, scale ``float32(amax / qmax)``) and each float output is
  the integer tensor itself (int8, int16 or int32, per-tensor or per-channel scale), so the graph
  has no boundary ops. The scales are in :attr:`QuantizeReport.io`. An int8 input may hold -128
  (bound ``qmax + 1``, as after a boundary ``QuantizeLinear``). For the same calibration the
  graph equals the ``"float"`` graph minus its boundary ops wherever the float graph quantizes an
  input once (the usual case), so its integer outputs are bit for bit what the ``"float"``
  graph dequantizes.

Float fallback (``allow_float``): a node with no integer form (no handler, or a handler that
raises :class:`QuantizationError`; its partial output is rolled back) stays float32. Its
integer inputs are dequantized (``DequantizeLinear`` with their scale, per channel where they
have one), it runs on float32, and its float outputs keep their names; an integer consumer
quantizes them (``QuantizeLinear`` at the scale calibrated for the original tensor), a graph
output takes them as they are (with ``io="int8"`` it is quantized to the wide dtype instead).
Without ``allow_float`` such a node is an error naming it.

Layout: :mod:`.core` (the state, ``need`` and the dtype policy), :mod:`.driver` (the graph walk,
graph I/O), :mod:`.fallback` (``allow_float``), :mod:`.rules` (op type -> rule), the rules in
:mod:`.linear`, :mod:`.arith`, :mod:`.pool`, :mod:`.shapes`, :mod:`.masks` and, for the edgert ops, the
``quantize.py`` of their folders under ``ops/`` (found through the op registry).
"""

from __future__ import annotations

from edgert.compiler.options import IO_MODES
from edgert.compiler.quantize.core import (ACT_BITS, QMAX, SHAPE_OPS, QTensor, QuantizeReport,
                                           Quantizer, Rule)
from edgert.compiler.quantize.driver import quantize_model

__all__ = ["ACT_BITS", "IO_MODES", "QMAX", "SHAPE_OPS", "QTensor", "QuantizeReport", "Quantizer",
           "Rule", "quantize_model"]
