"""``BinaryAttention``: attention on binary codes, scores by xor and popcount, in a quadratic
(softmax) or a linear (associative kernel) form (``docs/methods/binary-attention.md``).

    spec.py     scores / reference (normative numpy) / kernel_reference / example
    numba.py    numba_kernel
    tvm.py      te_compute, te_scores, schedule, Converter
    schema.py   schema, node_kwargs   (``OP.schema()``; ``binary_attention.schema`` is the module)
    counts.py   counts
"""

from edgert.ops._common.op import Op, lazy_exports
from edgert.ops.binary_attention.spec import (
    FORMS,
    OP_TYPE,
    check_form,
    check_inputs,
    kernel_reference,
    random_codes,
    reference,
    scores,
)

OP = Op(OP_TYPE, __name__)

__getattr__ = lazy_exports(__name__, {"numba_kernel": "numba", "te_compute": "tvm",
                                      "te_scores": "tvm"})

__all__ = ["OP", "OP_TYPE", "FORMS", "check_form", "check_inputs", "kernel_reference",
           "random_codes", "reference", "scores", "numba_kernel", "te_compute", "te_scores"]
