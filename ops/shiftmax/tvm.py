"""TVM side of ``Shiftmax``: the TE compute and the Relax converter of ``edgert.Shiftmax``."""

from __future__ import annotations

from typing import Any

import numpy as np
from tvm import relax, te, tirx

from edgert.ops._intmath.spec import INT31_MAX
from edgert.ops._intmath.tvm import te_shift_exp
from edgert.ops._common.relax_util import EdgertConverter
from edgert.ops.shiftmax import OP
from edgert.ops.shiftmax.spec import exp_table, out_dtype


def _te_keep(q: Any, exclude: Any | None) -> Any:
    """TIR predicate: element ``i`` of ``q`` takes part (``exclude`` broadcast numpy-style)."""
    if exclude is None:
        return lambda *i: tirx.const(True, "bool")
    offset = len(q.shape) - len(exclude.shape)

    def keep(*i):
        idx = [0 if isinstance(d, tirx.IntImm) and d.value == 1 else i[offset + j]
               for j, d in enumerate(exclude.shape)]
        v = exclude(*idx)
        return tirx.Not(v) if exclude.dtype == "bool" else v == tirx.const(0, exclude.dtype)
    return keep


def te_compute(q: Any, exclude: Any | None = None, table: Any | None = None, *, x0: int, n: int,
               k: int = 16) -> Any:
    """TVM TE Shiftmax over the last axis of ``q`` (any rank >= 1).

    With ``table`` (``spec.exp_table`` of ``q``'s dtype, a constant) each exponential is one
    load instead of the int64 arithmetic of ``shift_exp`` (a division by ``x0`` that x86
    cannot vectorize); the values are the same. The table path then runs in 32-bit lanes,
    which x86 vectorizes (it has no 64-bit vector max or multiply): ``q - max_row(q)`` and
    ``e`` are int32, only the row sum ``S`` is int64, and the last step is exact in uint32,
    because ``e <= S`` gives ``e * f = e * (INT31_MAX // S) <= INT31_MAX`` and the rounding
    term is below ``2**30`` (when ``S > INT31_MAX``, ``f = 0``). ``1 / S`` is computed once
    per row.
    """
    keep = _te_keep(q, exclude)
    *lead, length = q.shape
    wide = "int64" if table is None else "int32"
    # The row max starts at q's smallest value (not int64's): q - max then stays within
    # +-(2**bits - 1) even for a row with every element excluded, whose e are all 0 anyway.
    low = tirx.const(int(np.iinfo(str(q.dtype)).min), wide)
    zero = tirx.const(0, wide)
    r = te.reduce_axis((0, length), name="r")
    mx = te.compute(lead, lambda *i: te.max(tirx.Select(keep(*i, r), q(*i, r).astype(wide), low),
                                            axis=r), name="row_max")
    if table is None:
        def exp(x: Any) -> Any:
            return te_shift_exp(x, x0, n)
    else:
        top_index = tirx.const(int(table.shape[0]) - 1, "int32")

        # x > 0 only for excluded elements, whose e is 0: clamp for the load
        def exp(x: Any) -> Any:
            return table[tirx.min(x, zero) + top_index]
    e = te.compute(q.shape, lambda *i: tirx.Select(
        keep(*i), exp(q(*i).astype(wide) - mx(*i[:-1])), zero), name="shift_exp")
    r2 = te.reduce_axis((0, length), name="r2")
    s = te.compute(lead, lambda *i: te.sum(e(*i, r2).astype("int64"), axis=r2), name="row_sum")
    f = te.compute(lead, lambda *i: tirx.floordiv(
        tirx.const(INT31_MAX, "int64"), tirx.max(s(*i), tirx.const(1, "int64"))).astype("uint32"),
        name="row_recip")
    sh = 31 - (k - 1)
    top = tirx.const((1 << (k - 1)) - 1, "uint32")

    def body(*i):
        rounded = e(*i).astype("uint32") * f(*i[:-1]) + tirx.const(1 << (sh - 1), "uint32")
        v = tirx.shift_right(rounded, tirx.const(sh, "uint32"))
        return tirx.min(v, top).astype(out_dtype(k))

    return te.compute(q.shape, body, name="shiftmax")


class Converter(EdgertConverter):
    """``edgert.Shiftmax``: the kernel looks each exponential up in a table of every
    ``q - max_row(q)`` (:func:`~edgert.ops.shiftmax.spec.exp_table`)."""

    op = OP

    @classmethod
    def tables(cls, args: list, kwargs: dict[str, Any]) -> dict[str, Any]:
        table = exp_table(str(args[0].ty.dtype), x0=kwargs["x0"], n=kwargs["n"])
        return {"table": relax.const(table)}
