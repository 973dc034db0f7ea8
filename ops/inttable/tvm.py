"""TVM side of ``IntTable``: the TE compute and the Relax converter of ``edgert.IntTable``.

The lookup reads ``table`` at a data-dependent index, which TVM's pattern analysis calls
opaque, so it would never fuse with the ``Requant`` that feeds it or the product after it. The
converter marks its PrimFunc injective (``op_pattern`` 2: output element ``i`` depends on input
element ``i`` alone, the table is a constant read whole; TVM re-analyses a 0, elementwise), so
the fusion puts the chain in one kernel, which the CPU elementwise schedule vectorizes.
"""

from __future__ import annotations

from typing import Any

from tvm import te

from edgert.ops._common.relax_util import EdgertConverter
from edgert.ops.inttable import OP
from edgert.ops.inttable.spec import OFFSET

INJECTIVE = 2
"""``op_pattern`` of an injective PrimFunc (TVM's ``OpPatternKind.kInjective``)."""


def te_compute(q: Any, table: Any) -> Any:
    """TVM TE compute: int8 ``q`` of any rank, int8/int16 ``table`` [256] -> ``q``'s shape in
    the table's dtype, ``table[q + 128]``."""
    return te.compute(q.shape, lambda *i: table[q(*i).astype("int32") + OFFSET], name="inttable")


class Converter(EdgertConverter):
    """``edgert.IntTable``: ``call_tir`` of :func:`te_compute` (the table is a constant input),
    marked injective for the fusion (module docstring)."""

    op = OP

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):  # noqa: D102 (the frontend's entry point)
        args = [bb.normalize(x) for x in inputs if x is not None]
        return bb.emit_te(te_compute, *args, primfunc_name_hint=cls.op.folder,
                          primfunc_attrs={"op_pattern": INJECTIVE})
