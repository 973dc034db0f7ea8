"""TVM side of ``IntTable``: the TE compute and the Relax converter of ``edgert.IntTable``."""

from __future__ import annotations

from typing import Any

from tvm import te

from edgert.ops._common.relax_util import EdgertConverter
from edgert.ops.inttable import OP
from edgert.ops.inttable.spec import OFFSET


def te_compute(q: Any, table: Any) -> Any:
    """TVM TE compute: int8 ``q`` of any rank, int8/int16 ``table`` [256] -> ``q``'s shape in
    the table's dtype, ``table[q + 128]``."""
    return te.compute(q.shape, lambda *i: table[q(*i).astype("int32") + OFFSET], name="inttable")


class Converter(EdgertConverter):
    """``edgert.IntTable``: ``call_tir`` of :func:`te_compute` (the table is a constant input)."""

    op = OP
