"""``ShiftMatMul``: int8/int16 activations times power-of-two weight codes, each product a
shift, summed in int32 (ShiftAddViT's shift linears, ``docs/methods/shift-linear.md``).

    spec.py     power_of_two_codes / code_weights / accumulator_bound / reference / example
    numba.py    numba_kernel
    tvm.py      te_compute, schedule, Converter
    schema.py   schema, node_kwargs   (``OP.schema()``; ``shift_matmul.schema`` is the module)
    counts.py   counts
"""

from edgert.ops._common.op import Op, lazy_exports
from edgert.ops.shift_matmul.spec import (
    A_DTYPES,
    MAX_CODE,
    MAX_SHIFT,
    OP_TYPE,
    accumulator_bound,
    check_operands,
    code_weights,
    power_of_two_codes,
    reference,
)

OP = Op(OP_TYPE, __name__)

__getattr__ = lazy_exports(__name__, {"numba_kernel": "numba", "te_compute": "tvm"})

__all__ = ["OP", "OP_TYPE", "A_DTYPES", "MAX_CODE", "MAX_SHIFT", "accumulator_bound",
           "check_operands", "code_weights", "power_of_two_codes", "reference", "numba_kernel",
           "te_compute"]
