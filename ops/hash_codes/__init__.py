"""``HashCodes``: float32 vectors -> packed b-bit codes by a kernelized hash (binary attention,
``docs/methods/binary-attention.md``).

    spec.py     reference (normative numpy) / projections / pack / unpack / example
    numba.py    numba_kernel
    tvm.py      te_compute, schedule, Converter
    schema.py   schema, node_kwargs   (``OP.schema()``; ``hash_codes.schema`` is the module)
    counts.py   counts
"""

from edgert.ops._common.op import Op, lazy_exports
from edgert.ops.hash_codes.spec import (
    BITS,
    OP_TYPE,
    check_inputs,
    code_dtype,
    pack,
    projections,
    random_params,
    reference,
    unpack,
)

OP = Op(OP_TYPE, __name__)

__getattr__ = lazy_exports(__name__, {"numba_kernel": "numba", "te_compute": "tvm"})

__all__ = ["OP", "OP_TYPE", "BITS", "check_inputs", "code_dtype", "pack", "projections",
           "random_params", "reference", "unpack", "numba_kernel", "te_compute"]
