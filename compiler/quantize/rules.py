"""Which rule rewrites which ONNX op type: one table, built from the rule modules here and
from the op folders' ``quantize.py`` (found through :mod:`edgert.ops.registry`: Softmax ->
Shiftmax, Gelu -> ShiftGELU, LayerNormalization -> ILayerNorm)."""

from __future__ import annotations

from edgert.compiler.quantize import arith, cnn, linear, masks, pool, shapes
from edgert.compiler.quantize.core import SHAPE_OPS, Rule
from edgert.ops import registry


def table() -> dict[str, Rule]:
    """ONNX op type -> the rule that writes its integer form (ops without one have no
    integer form: an error, or float32 with ``allow_float``)."""
    out: dict[str, Rule] = {
        "MatMul": linear.matmul, "Gemm": linear.gemm, "Conv": linear.conv,
        "Add": arith.add, "Mul": arith.scale_by_const, "Div": arith.scale_by_const,
        "Relu": arith.relu, "Cast": arith.cast, "Sub": arith.sub,
        "ReduceSum": arith.reduce_sum, "Clip": arith.clip,
        "Shape": shapes.shape, "MaxPool": pool.max_pool,
        "GlobalAveragePool": pool.global_average_pool, "ReduceMean": pool.reduce_mean,
        "AveragePool": pool.average_pool, "Split": shapes.split,
        "Where": masks.where, "ConstantOfShape": masks.constant_of_shape,
        "IsNaN": masks.is_nan, "IsInf": masks.is_nan,
        "BatchNormalization": cnn.batch_norm, "Resize": cnn.resize,
        "ConvTranspose": cnn.conv_transpose,
    }
    out.update({op: shapes.shape_op for op in SHAPE_OPS})
    for op in registry.all():
        rules = op.quantize
        for onnx_op in getattr(rules, "ONNX_OPS", ()):
            out[onnx_op] = rules.rule
    return out
