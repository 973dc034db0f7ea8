"""TVM side of ``ShiftGELU``: the TE compute and the Relax converter of ``edgert.ShiftGELU``."""

from __future__ import annotations

from typing import Any

import numpy as np
from tvm import relax, te, tirx

from edgert.ops._intmath.spec import INT31_MAX
from edgert.ops._intmath.tvm import te_shift_exp
from edgert.ops._common.relax_util import EdgertConverter
from edgert.ops.shiftgelu import OP
from edgert.ops.shiftgelu.spec import SIG_SHIFT, fits, lookup_table


def te_compute(q: Any, table: Any = None, *, x0: int, n: int) -> Any:
    """TVM TE compute: ``q`` an int8/int16 tensor of any rank -> int32 tensor of the same shape.

    With ``table`` (the int32 ``spec.lookup_table`` of ``q``'s dtype, a constant) the kernel is
    one load per element, ``table[q - min]``: the same values as the arithmetic (the table is
    the reference's output for every input), without its int64 division, which x86 cannot
    vectorize (measured on all-MiniLM-L6: 1.1 ms -> see benchmarks/bench_int.py per layer).
    """
    if x0 >= 0 or n < 0 or not fits(x0, n):
        raise ValueError(f"ShiftGELU constants out of range: x0={x0}, n={n} (use params())")
    if table is not None:
        offset = -int(np.iinfo(str(q.dtype)).min)
        return te.compute(q.shape, lambda *i: table[q(*i).astype("int32") + offset],
                          name="shiftgelu")

    def body(*idx):
        v = q(*idx).astype("int64")
        m = tirx.max(v, tirx.const(0, "int64"))
        e1 = te_shift_exp(v - m, x0, n)
        e2 = te_shift_exp(-m, x0, n)
        # Positive numerator, e1 + e2 > 0: floor == truncation.
        recip = tirx.truncdiv(tirx.const(INT31_MAX, "int64"), e1 + e2)
        sig = tirx.shift_right(recip * e1, tirx.const(SIG_SHIFT, "int64"))
        return (v * sig).astype("int32")

    return te.compute(q.shape, body, name="shiftgelu")


class Converter(EdgertConverter):
    """``edgert.ShiftGELU``: the kernel looks each result up in a table of every input value."""

    op = OP

    @classmethod
    def tables(cls, args: list, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {"table": relax.const(lookup_table(str(args[0].ty.dtype), **kwargs))}
