"""TVM side of ``HashCodes``: the TE compute, its CPU schedule and the Relax converter.

The compute is the spec's arithmetic stage by stage (norm, normalized vector, squared distances,
RBF features, projections, packed signs), every product that meets an addition fenced
(:func:`edgert.ops._floatmath.tvm.fence`: TVM lets LLVM contract into FMAs) and every sum a
``te.sum`` in ascending index, so the kernel gives the spec's bits.

Schedule (:func:`schedule`, the same for x86 and aarch64): one loop over all vectors (batch,
head and sequence fused; parallel when the work is large enough), and under it each stage for
that vector, so the intermediates stay in a few hundred bytes of stack. The projection's bit
loop is unrolled into the packing.

CUDA (:func:`gpu_func`): one thread per vector (blocks of
:data:`~edgert.ops._common.gpu.THREADS`), each stage computed by that thread into registers or
local memory; products, the division and the square root round to nearest
(:func:`edgert.ops._floatmath.tvm.cuda_rounding`), so the codes are the spec's.
"""

from __future__ import annotations

from typing import Any

from tvm import te, tirx

from edgert.ops._common.gpu import mark
from edgert.ops._common.relax_util import EdgertConverter, attrs_of, emit_scheduled
from edgert.ops._floatmath.tvm import div, exp_neg_tir, fence, sqrt
from edgert.ops.hash_codes import OP
from edgert.ops.hash_codes.spec import code_dtype

PARALLEL_MIN_WORK = 1 << 14
"""Multiply-adds (vectors x (m x D + b x m), static) below which the kernel runs on one thread."""
STAGES = ("hash_norm", "hash_unit", "hash_dist", "hash_feat", "hash_proj")
"""The producer stages, in the order they are computed for one vector."""


def _f(v: float) -> Any:
    return tirx.const(float(v), "float32")


def _static(dim: Any) -> int | None:
    return int(dim.value) if isinstance(dim, tirx.IntImm) else None


def te_compute(x: Any, anchors: Any, gamma: Any, mean: Any, proj: Any, *, bits: int) -> Any:
    """TVM TE HashCodes: ``x`` float32 [..., H, S, D] and the per-head (or shared) parameters
    -> codes [..., H, S] of ``code_dtype(bits)`` (the spec's bits)."""
    dtype = str(code_dtype(bits))
    *lead, heads, seq, dim = x.shape
    shared = _static(anchors.shape[0]) == 1
    m, b = anchors.shape[1], proj.shape[1]

    def head(i: tuple) -> Any:
        return 0 if shared else i[-2]

    d = te.reduce_axis((0, dim), name="d")
    n2 = te.compute((*lead, heads, seq), lambda *i: te.sum(fence(x(*i, d) * x(*i, d)), axis=d),
                    name="hash_norm")

    def unit(*i):
        nrm = sqrt(n2(*i[:-1]))
        return div(x(*i), tirx.Select(nrm == _f(0), _f(1), nrm))

    xh = te.compute(x.shape, unit, name="hash_unit")
    d2 = te.reduce_axis((0, dim), name="d2")

    def dist(*i):
        *t, j = i
        e = xh(*t, d2) - anchors(head(t), j, d2)
        return te.sum(fence(e * e), axis=d2)

    dist_t = te.compute((*lead, heads, seq, m), dist, name="hash_dist")

    def feat(*i):
        *t, j = i
        return exp_neg_tir(-fence(dist_t(*i) * gamma(head(t)))) - mean(head(t), j)

    feat_t = te.compute((*lead, heads, seq, m), feat, name="hash_feat")
    jr = te.reduce_axis((0, m), name="j")

    def project(*i):
        *t, k = i
        return te.sum(fence(proj(head(t), k, jr) * feat_t(*t, jr)), axis=jr)

    proj_t = te.compute((*lead, heads, seq, b), project, name="hash_proj")
    kr = te.reduce_axis((0, b), name="k")
    one = tirx.const(1, dtype)

    def codes(*i):
        bit = tirx.shift_left(one, kr.var.astype(dtype))
        return te.sum(tirx.Select(proj_t(*i, kr) >= _f(0), bit, tirx.const(0, dtype)), axis=kr)

    return te.compute((*lead, heads, seq), codes, name="hash_codes")


def _work(sch: Any, name: str) -> int | float:
    """The iterations of block ``name`` (inf when a loop extent is symbolic)."""
    n = 1
    for loop in sch.get_loops(sch.get_sblock(name)):
        e = _static(sch.get(loop).extent)
        if e is None:
            return float("inf")
        n *= e
    return n


def schedule(func: Any) -> Any:
    """The scheduled form of the PrimFunc of :func:`te_compute` (module docstring), marked
    scheduled and opaque to fusion."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    work = _work(sch, "hash_dist") + _work(sch, "hash_proj")
    block = sch.get_sblock("hash_codes")
    *outer, bit = sch.get_loops(block)
    tokens = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    if work >= PARALLEL_MIN_WORK:
        sch.parallel(tokens)
    for name in STAGES[::-1]:
        sch.compute_at(sch.get_sblock(name), tokens)
    sch.unroll(bit)
    return sch.mod["main"].with_attrs({"tirx.is_scheduled": True, "op_pattern": 8})


def gpu_func(func: Any) -> Any:
    """The CUDA kernel for a kernel of this op (module docstring)."""
    from tvm import s_tir

    from edgert.ops._common import gpu

    kwargs = gpu.kwargs_of(func)
    sch = s_tir.Schedule(gpu.rebuild(func, lambda *t: te_compute(*t, **kwargs)))
    block = sch.get_sblock("hash_codes")
    *outer, _bit = sch.get_loops(block)
    thread = gpu.bind_threads(sch, sch.fuse(*outer) if len(outer) > 1 else outer[0])
    for name in STAGES[::-1]:
        stage = sch.get_sblock(name)
        sch.compute_at(stage, thread)
        sch.set_scope(stage, 0, "local")
    return gpu.finish(sch)


class Converter(EdgertConverter):
    """``edgert.HashCodes``: the TE compute, replaced by its :func:`schedule`."""

    op = OP

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):  # noqa: D102 (the frontend's entry point)
        kwargs = OP.node_kwargs(attrs_of(attr))
        return emit_scheduled(bb, te_compute, [bb.normalize(x) for x in inputs], [], OP.folder,
                              lambda func: mark(schedule(func), OP.folder, kwargs), **kwargs)
