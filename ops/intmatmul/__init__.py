"""``IntMatMul``: integer matrix product with int32 accumulators (int8/int16 operands).

    spec.py     accumulator_bound / reference (normative numpy) / example
    numba.py    numba_kernel (rank >= 2), matmul (numpy matmul shapes)
    tvm.py      te_compute, emit_int_matmul, Converter
    schema.py   schema, node_kwargs   (``OP.schema()``; ``intmatmul.schema`` is the module)
    counts.py   counts
"""

from edgert.ops.intmatmul.spec import (
    IN_DTYPES,
    INT32_MAX,
    OP_TYPE,
    accumulator_bound,
    check_operands,
    reference,
)
from edgert.ops._common.op import Op, lazy_exports

OP = Op(OP_TYPE, __name__)

__getattr__ = lazy_exports(__name__, {"numba_kernel": "numba", "te_compute": "tvm",
                                      "emit_int_matmul": "tvm", "INT_MATMUL_ATTRS": "tvm"})

__all__ = ["OP", "OP_TYPE", "IN_DTYPES", "INT32_MAX", "accumulator_bound", "check_operands",
           "reference", "numba_kernel", "te_compute", "emit_int_matmul", "INT_MATMUL_ATTRS"]
