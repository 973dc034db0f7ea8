"""TVM side of ``ILayerNorm``: the TE compute and the Relax converter of ``edgert.ILayerNorm``."""

from __future__ import annotations

from typing import Any

from tvm import te, tirx

from edgert.ops._intmath.spec import INT31_MAX
from edgert.ops._intmath.tvm import te_isqrt
from edgert.ops.ilayernorm import OP
from edgert.ops._common.relax_util import EdgertConverter


def te_compute(x: Any, bias: Any | None = None) -> Any:
    """TVM TE compute: ``x`` int8/int16/int32 [..., N], optional int32 ``bias`` [N] -> int32.

    Stages: row sum, floored mean, sum of squares, exact isqrt (``_intmath.tvm.te_isqrt``),
    reciprocal, then the elementwise output.
    """
    shape = list(x.shape)
    rows, n = shape[:-1], shape[-1]
    i64 = lambda k: tirx.const(k, "int64")  # noqa: E731

    k = te.reduce_axis((0, n), name="k")
    total = te.compute(rows, lambda *r: te.sum(x(*r, k).astype("int64"), axis=k), name="iln_sum")
    # The sum may be negative: floordiv, not C truncation.
    mean = te.compute(rows, lambda *r: tirx.floordiv(total(*r), i64(int(n))), name="iln_mean")
    k2 = te.reduce_axis((0, n), name="k2")

    def sq(*r):
        y = x(*r, k2).astype("int64") - mean(*r)
        return te.sum(y * y, axis=k2)

    var = te.compute(rows, sq, name="iln_var")
    # std = max(isqrt(var), 1) = isqrt(max(var, 1)); the Newton steps then never divide by 0.
    var1 = te.compute(rows, lambda *r: tirx.max(var(*r), i64(1)), name="iln_var1")
    std = te_isqrt(var1)
    factor = te.compute(rows, lambda *r: tirx.truncdiv(i64(INT31_MAX), std(*r)),  # std >= 1
                        name="iln_factor")

    def body(*idx):
        r = idx[:-1]
        v = tirx.shift_right((x(*idx).astype("int64") - mean(*r)) * factor(*r), i64(1))
        if bias is not None:
            v = v + bias[idx[-1]].astype("int64")
        return v.astype("int32")

    return te.compute(shape, body, name="ilayernorm")


class Converter(EdgertConverter):
    """``edgert.ILayerNorm(x[, bias])``: ``call_tir`` of :func:`te_compute`."""

    op = OP
