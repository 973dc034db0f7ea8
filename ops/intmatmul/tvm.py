"""TVM side of ``IntMatMul``: the TE compute, its emission into Relax (marked for
``compiler/schedule_intmatmul.py``) and the converter of ``edgert.IntMatMul`` nodes."""

from __future__ import annotations

from typing import Any

from tvm import te

from edgert.ops.intmatmul import OP
from edgert.ops._common.relax_util import EdgertConverter

INT_MATMUL_ATTRS = {"edgert.op": "intmatmul"}
"""PrimFunc attributes of the integer matmuls: ``compiler/schedule_intmatmul.py`` finds them
by it."""


def te_compute(a: Any, b: Any) -> Any:
    """TVM TE IntMatMul: ``a`` [..., M, K], ``b`` [K, N] or [..., K, N] (batch dims equal or
    1 in ``b``); int32 accumulation."""
    *a_batch, m, k = a.shape
    *b_batch, _, n = b.shape
    r = te.reduce_axis((0, k), name="k")
    offset = len(a_batch) - len(b_batch)

    def b_index(batch_idx: tuple) -> list:
        idx = []
        for i, dim in enumerate(b_batch):
            idx.append(0 if isinstance(dim, int) and dim == 1 or getattr(dim, "value", None) == 1
                       else batch_idx[offset + i])
        return idx

    def body(*idx):
        *bi, i, j = idx
        return te.sum(a(*bi, i, r).astype("int32") * b(*b_index(tuple(bi)), r, j).astype("int32"),
                      axis=r)

    return te.compute((*a_batch, m, n), body, name="int_matmul")


def emit_int_matmul(bb: Any, a: Any, b: Any, name: str = "matmul_integer") -> Any:
    """``a @ b`` (int8/int16 operands, int32 out) emitted on :func:`te_compute`, marked with
    :data:`INT_MATMUL_ATTRS` for :mod:`edgert.compiler.schedule_intmatmul`."""
    return bb.emit_te(te_compute, a, b, primfunc_name_hint=name, primfunc_attrs=INT_MATMUL_ATTRS)


class Converter(EdgertConverter):
    """``edgert.IntMatMul`` (int8/int16 operands) on the IntMatMul compute."""

    op = OP

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):  # noqa: D102 (the frontend's entry point)
        a, b = [x for x in inputs if x is not None]
        return emit_int_matmul(bb, a, b, OP.folder)
