"""``Shiftmax``: integer softmax over the last axis (I-ViT, with our pinned choices).

    spec.py     params / out_dtype / exp_table / reference (normative numpy) / to_float / example
    numba.py    numba_kernel
    tvm.py      te_compute, Converter
    schema.py   schema, node_kwargs   (``OP.schema()``; ``shiftmax.schema`` is the module)
    counts.py   counts
"""

from edgert.ops._common.op import Op, lazy_exports
from edgert.ops.shiftmax.spec import (
    OP_TYPE,
    exp_table,
    keep_mask,
    out_dtype,
    params,
    reference,
    shift_exp,
    to_float,
)

OP = Op(OP_TYPE, __name__)

__getattr__ = lazy_exports(__name__, {"numba_kernel": "numba", "te_compute": "tvm",
                                      "te_shift_exp": "tvm"})

__all__ = ["OP", "OP_TYPE", "exp_table", "keep_mask", "out_dtype", "params", "reference",
           "shift_exp", "to_float", "numba_kernel", "te_compute", "te_shift_exp"]
