"""``ILayerNorm``: integer-only layer normalization over the last axis (I-ViT, exact isqrt).

    spec.py     output_scale / check_range / bias_fits / fold_beta / reference (normative numpy)
                / to_float / example
    numba.py    numba_kernel
    tvm.py      te_compute, Converter   (te_isqrt: :mod:`edgert.ops._intmath.tvm`)
    schema.py   schema, node_kwargs   (``OP.schema()``; ``ilayernorm.schema`` is the module)
    counts.py   counts
"""

from edgert.ops._intmath.spec import ISQRT_STEPS
from edgert.ops.ilayernorm.spec import (
    BIAS_LIMIT,
    IN_DTYPES,
    INT64_MAX,
    OP_TYPE,
    OUT_SHIFT,
    bias_fits,
    check_inputs,
    check_range,
    fold_beta,
    output_scale,
    reference,
    to_float,
)
from edgert.ops._common.op import Op, lazy_exports

OP = Op(OP_TYPE, __name__)

__getattr__ = lazy_exports(__name__, {"numba_kernel": "numba", "te_compute": "tvm",
                                      "te_isqrt": "tvm"})

__all__ = ["OP", "OP_TYPE", "BIAS_LIMIT", "IN_DTYPES", "INT64_MAX", "ISQRT_STEPS", "OUT_SHIFT",
           "bias_fits", "check_inputs", "check_range", "fold_beta", "output_scale", "reference",
           "to_float", "numba_kernel", "te_compute", "te_isqrt"]
