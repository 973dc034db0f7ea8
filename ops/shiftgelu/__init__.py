"""``ShiftGELU``: integer-only GELU, ``GELU(x) ~ x * sigmoid(1.702 * x)`` (I-ViT, per element).

    spec.py     params / lookup_table / reference (normative numpy) / to_float / example
    numba.py    numba_kernel
    tvm.py      te_compute, Converter
    schema.py   schema, node_kwargs   (``OP.schema()``; ``shiftgelu.schema`` is the module)
    counts.py   counts
"""

from edgert.ops._common.op import Op, lazy_exports
from edgert.ops.shiftgelu.spec import (
    DEFAULT_N,
    DEFAULT_SUM_BITS,
    IN_DTYPES,
    OP_TYPE,
    OUT_FRAC_BITS,
    SIG_SHIFT,
    SUM_BITS,
    check_input,
    fits,
    lookup_table,
    params,
    reference,
    to_float,
)

OP = Op(OP_TYPE, __name__)

__getattr__ = lazy_exports(__name__, {"numba_kernel": "numba", "te_compute": "tvm"})

__all__ = ["OP", "OP_TYPE", "DEFAULT_N", "DEFAULT_SUM_BITS", "IN_DTYPES", "OUT_FRAC_BITS",
           "SIG_SHIFT", "SUM_BITS", "check_input", "fits", "lookup_table", "params", "reference",
           "to_float", "numba_kernel", "te_compute"]
