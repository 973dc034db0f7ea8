"""``IntTable``: an elementwise function of an int8 tensor read from a 256-entry table computed
at compile time (HardSigmoid, HardSwish, Sigmoid, SiLU, Tanh of the integer graph).

    spec.py      reference (normative numpy) / make_table / float_function / saturated_range /
                 example
    numba.py     numba_kernel
    tvm.py       te_compute, Converter
    schema.py    schema, node_kwargs   (``OP.schema()``; ``inttable.schema`` is the module)
    counts.py    counts
    quantize.py  the quantizer rule: HardSigmoid, HardSwish, Sigmoid (and Mul(x, Sigmoid(x)):
                 SiLU), Tanh -> IntTable
"""

from edgert.ops._common.op import Op, lazy_exports
from edgert.ops.inttable.spec import (
    FUNCTIONS,
    OFFSET,
    OP_TYPE,
    OUT_DTYPES,
    TABLE_SIZE,
    check_operands,
    float_function,
    make_table,
    reference,
    saturated_range,
)

OP = Op(OP_TYPE, __name__)

__getattr__ = lazy_exports(__name__, {"numba_kernel": "numba", "te_compute": "tvm"})

__all__ = ["OP", "OP_TYPE", "FUNCTIONS", "OFFSET", "OUT_DTYPES", "TABLE_SIZE", "check_operands",
           "float_function", "make_table", "reference", "saturated_range", "numba_kernel",
           "te_compute"]
