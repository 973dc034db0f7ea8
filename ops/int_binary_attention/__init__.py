"""``IntBinaryAttention``: binary attention in integers: int8 queries and keys hashed to packed
codes by the sign of an int8 projection, scores by xor and popcount (quadratic form, for
Shiftmax), or the kernel-weighted mean of int8 values (linear form)
(``docs/methods/binary-attention.md``).

    spec.py     reference (normative numpy) / codes / linear_sums / kernel_sums / example
    numba.py    numba_kernel
    tvm.py      te_compute, te_codes, schedule, Converter
    schema.py   schema, node_kwargs   (``OP.schema()``)
    counts.py   counts
"""

from edgert.ops._common.op import Op, lazy_exports
from edgert.ops.int_binary_attention.spec import (
    DEFAULT_FRAC,
    OP_TYPE,
    check_inputs,
    codes,
    kernel_sums,
    linear_sums,
    max_keys,
    random_inputs,
    reference,
    round_div,
)

OP = Op(OP_TYPE, __name__)

__getattr__ = lazy_exports(__name__, {"numba_kernel": "numba", "te_compute": "tvm",
                                      "te_codes": "tvm"})

__all__ = ["OP", "OP_TYPE", "DEFAULT_FRAC", "check_inputs", "codes", "kernel_sums",
           "linear_sums", "max_keys", "random_inputs", "reference", "round_div",
           "numba_kernel", "te_compute", "te_codes"]
