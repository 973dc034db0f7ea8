"""``LMulMatMul``: float32 matrix product with every product an L-Mul (integer addition of the
operands' bit patterns, mantissas cut to 2..5 bits), summed in float32 in ascending k.

    spec.py     lmul / lmul_bits / reference (normative numpy) / example
    numba.py    numba_kernel
    tvm.py      te_compute, lmul_tir, schedule, Converter
    tvm_cpu.py  the vectorized CPU kernel (x86 AVX2 / AVX-512, NEON) and its swap-in pass
    schema.py   schema, node_kwargs   (``OP.schema()``; ``lmul_matmul.schema`` is the module)
    counts.py   counts
    study.py    the error study: L-Mul against float8 products (``docs/methods/lmul.md``)
"""

from edgert.ops._common.op import Op, lazy_exports
from edgert.ops.lmul_matmul.spec import (
    DEFAULT_MANTISSA_BITS,
    MANTISSA_BITS,
    OP_TYPE,
    check_mantissa_bits,
    check_operands,
    constant,
    lmul,
    lmul_bits,
    offset_bits,
    reference,
    truncation_mask,
)

OP = Op(OP_TYPE, __name__, extra_parts=("study",))

__getattr__ = lazy_exports(__name__, {"numba_kernel": "numba", "te_compute": "tvm",
                                      "lmul_tir": "tvm"})

__all__ = ["OP", "OP_TYPE", "DEFAULT_MANTISSA_BITS", "MANTISSA_BITS", "check_mantissa_bits",
           "check_operands", "constant", "lmul", "lmul_bits", "offset_bits", "reference",
           "truncation_mask", "numba_kernel", "te_compute", "lmul_tir"]
