"""TVM side of ``Requant``: the TE compute and the Relax converter of ``edgert.Requant`` nodes."""

from __future__ import annotations

from typing import Any

import tvm
from tvm import relax, te, tirx

from edgert.ops._common.relax_util import EdgertConverter, as_vector
from edgert.ops.requant import OP
from edgert.ops.requant.spec import narrow


def te_compute(q: Any, m: Any, e: Any, *, lo: int, hi: int, to: str = "int8", axis: int = -1) -> Any:
    """TVM TE compute: ``q`` of any rank; ``m`` int64 (or int32, see
    :func:`~edgert.ops.requant.spec.narrow`) and ``e`` int64 tensors of shape [1] or [C]."""
    per_channel = int(m.shape[0]) != 1
    ax = axis % len(q.shape) if len(q.shape) else 0

    def body(*idx):
        c = idx[ax] if per_channel else 0
        acc = q(*idx).astype("int64") * m[c].astype("int64") + tirx.shift_left(
            tirx.const(1, "int64"), e[c] - 1)
        v = tirx.shift_right(acc, e[c])
        return tirx.max(tirx.min(v, tirx.const(hi, "int64")), tirx.const(lo, "int64")).astype(to)

    return te.compute(q.shape, body, name="requant")


class Converter(EdgertConverter):
    """``edgert.Requant``: constant multipliers narrowed to int32 where exact (a vectorizable
    multiply); scalar multiplier/shift given a dimension ([1]), as :func:`te_compute` indexes."""

    op = OP

    @classmethod
    def prepare(cls, bb: Any, args: list) -> list:
        q, m, e = args
        if isinstance(m, tvm.ir.GenericConst) and isinstance(e, tvm.ir.GenericConst):
            narrowed = narrow(m.value.numpy().reshape(-1), e.value.numpy().reshape(-1))
            if narrowed is not None:    # int32 multipliers: a vectorizable multiply
                return [q, *map(relax.const, narrowed)]
        return [q, *(v if int(v.ty.ndim) else as_vector(bb, v) for v in (m, e))]
