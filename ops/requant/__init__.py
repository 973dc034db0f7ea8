"""``Requant``: dyadic requantization, the only way scales change inside an integer graph.

    spec.py     params / narrow / reference (normative numpy) / example
    numba.py    numba_kernel
    tvm.py      te_compute, Converter
    schema.py   schema, node_kwargs   (``OP.schema()``; ``requant.schema`` is the module)
    counts.py   counts
"""

from edgert.ops._common.op import Op, lazy_exports
from edgert.ops.requant.spec import OP_TYPE, OUT_DTYPES, narrow, params, reference

OP = Op(OP_TYPE, __name__)

__getattr__ = lazy_exports(__name__, {"numba_kernel": "numba", "te_compute": "tvm"})

__all__ = ["OP", "OP_TYPE", "OUT_DTYPES", "narrow", "params", "reference", "numba_kernel",
           "te_compute"]
