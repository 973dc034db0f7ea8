"""TVM side of ``Requant``: the TE compute and the Relax converter of ``edgert.Requant`` nodes."""

from __future__ import annotations

from typing import Any

import tvm
from tvm import relax, te, tirx

from edgert.ops._common.relax_util import EdgertConverter, as_vector, attrs_of
from edgert.ops.requant import OP
from edgert.ops.requant.spec import narrow

OP_ATTR = "edgert.op"
"""PrimFunc attribute that marks a Requant (value ``"requant"``); the PrimFunc also carries
its keyword arguments as ``edgert.requant.<name>`` (``lo``, ``hi``, ``to``, ``axis``), so that
kernels can fuse it as an epilogue (:mod:`edgert.compiler.schedule_int_conv`)."""
OP_NAME = "requant"


def requant_value(q: Any, m: Any, e: Any, *, lo: int, hi: int, to: str) -> Any:
    """TIR: ``clamp((q * m + 2**(e-1)) >> e, lo, hi)`` in int64, cast to ``to`` (the spec's
    arithmetic) for one element ``q`` (any integer dtype), its multiplier ``m`` (int32 or
    int64) and shift ``e`` (int64)."""
    acc = q.astype("int64") * m.astype("int64") + tirx.shift_left(
        tirx.const(1, "int64"), e - 1)
    v = tirx.shift_right(acc, e)
    return tirx.max(tirx.min(v, tirx.const(hi, "int64")), tirx.const(lo, "int64")).astype(to)


def te_compute(q: Any, m: Any, e: Any, *, lo: int, hi: int, to: str = "int8", axis: int = -1) -> Any:
    """TVM TE compute: ``q`` of any rank; ``m`` int64 (or int32, see
    :func:`~edgert.ops.requant.spec.narrow`) and ``e`` int64 tensors of shape [1] or [C]."""
    per_channel = int(m.shape[0]) != 1
    ax = axis % len(q.shape) if len(q.shape) else 0

    def body(*idx):
        c = idx[ax] if per_channel else 0
        return requant_value(q(*idx), m[c], e[c], lo=lo, hi=hi, to=to)

    return te.compute(q.shape, body, name="requant")


class Converter(EdgertConverter):
    """``edgert.Requant``: constant multipliers narrowed to int32 where exact (a vectorizable
    multiply); scalar multiplier/shift given a dimension ([1]), as :func:`te_compute` indexes.
    The PrimFunc is marked with :data:`OP_ATTR` and its keyword arguments."""

    op = OP

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):  # noqa: D102 (the frontend's entry point)
        args = cls.prepare(bb, [bb.normalize(x) for x in inputs if x is not None])
        kwargs = cls.op.node_kwargs(attrs_of(attr))
        marks = {OP_ATTR: OP_NAME, **{f"edgert.requant.{k}": v for k, v in kwargs.items()}}
        return bb.emit_te(te_compute, *args, **kwargs, primfunc_name_hint=cls.op.folder,
                          primfunc_attrs=marks)

    @classmethod
    def prepare(cls, bb: Any, args: list) -> list:
        q, m, e = args
        if isinstance(m, tvm.ir.GenericConst) and isinstance(e, tvm.ir.GenericConst):
            narrowed = narrow(m.value.numpy().reshape(-1), e.value.numpy().reshape(-1))
            if narrowed is not None:    # int32 multipliers: a vectorizable multiply
                return [q, *map(relax.const, narrowed)]
        return [q, *(v if int(v.ty.ndim) else as_vector(bb, v) for v in (m, e))]
