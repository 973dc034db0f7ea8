"""TVM side of ``BinaryAttention``: the TE computes of both forms, their CPU schedules and the
Relax converter.

The computes are the spec's arithmetic (:mod:`edgert.ops.binary_attention.spec`): scores by
``popcount(cq xor ck)`` in integers, every product that meets an addition fenced
(:func:`edgert.ops._floatmath.tvm.fence`: TVM lets LLVM contract into FMAs), every sum a
``te.sum`` in ascending index, so the kernels give the spec's bits.

Schedules (:func:`schedule`, the same for x86 and aarch64):

- quadratic: one loop over query rows (batch, head, row fused; parallel when the work is large
  enough); under it the row's scores and logits (a scalar loop over keys: one ``popcnt`` per
  key on x86, ``cnt`` on aarch64), maximum, exponentials and sum, then the weighted value rows
  with the value columns vectorized (keys outside, so each column still sums in key order).
- linear: one loop over (batch, head) (parallel when large); under it ``H^T U`` and the key
  sums, keys outside and the value columns vectorized, then per query row the signed sums
  over bits and the normalization.

CUDA (:func:`gpu_func`): the quadratic form one thread per query row (batch, head and row
fused), the row's maximum, denominator and weighted values in registers / local memory, the
logits and exponentials recomputed where read (no per-row buffer over a symbolic key count);
the linear form one thread per (batch, head), its bit sums in local memory, then the rows.
Products, divisions round to nearest (:func:`edgert.ops._floatmath.tvm.cuda_rounding`) and
``popcount`` is CUDA's ``__popc``, so the GPU gives the spec's bits.

Each kernel is marked ``tirx.is_scheduled`` (the CPU pipeline's rules leave it alone) and
opaque to operator fusion (``op_pattern`` 8).
"""

from __future__ import annotations

from typing import Any

from tvm import te, tirx

from edgert.ops._common.gpu import mark
from edgert.ops._common.relax_util import (EdgertConverter, attrs_of, emit_scheduled,
                                           optional_inputs)
from edgert.ops._floatmath.tvm import div, exp_neg_tir, fence, in_cuda
from edgert.ops.binary_attention import OP
from edgert.ops.binary_attention.spec import check_form
from edgert.ops.hash_codes.spec import code_dtype

PARALLEL_MIN_WORK = 1 << 14
"""Score or value-row work (static) below which a kernel runs on one thread."""


def _f(v: float) -> Any:
    return tirx.const(float(v), "float32")


def _static(dim: Any) -> int | None:
    return int(dim.value) if isinstance(dim, tirx.IntImm) else None


def _bcast(dims: Any, idx: tuple) -> list:
    """Indices into a broadcast operand (dims of static size 1 read index 0)."""
    return [0 if _static(d) == 1 else i for d, i in zip(dims, idx)]


def te_scores(cq: Any, ck: Any, *, bits: int) -> Any:
    """int32 [..., H, S, T]: ``bits - 2 * popcount(cq_i xor ck_j)``."""
    *lead, seq = cq.shape
    keys = ck.shape[-1]

    def body(*idx):
        *t, i, j = idx
        return _score(cq(*t, i), ck(*t, j), bits)

    return te.compute((*lead, seq, keys), body, name="ba_scores")


def _popcount(x: Any) -> Any:
    """int32 popcount of an unsigned code; for CUDA ``__popc`` / ``__popcll`` (TVM's CUDA
    backend lowers ``tirx.popcount`` of no narrow type)."""
    if not in_cuda():
        return tirx.popcount(x).astype("int32")
    if str(x.ty) == "uint64":
        return tirx.call_pure_extern("int32", "__popcll", x)
    return tirx.call_pure_extern("int32", "__popc", x.astype("uint32"))


def _score(a: Any, b: Any, bits: int) -> Any:
    pop = _popcount(tirx.bitwise_xor(a, b))
    return tirx.const(bits, "int32") - tirx.shift_left(pop, tirx.const(1, "int32"))


def _bit(code: Any, k: Any) -> Any:
    """Whether bit ``k`` of ``code`` is set."""
    one = tirx.const(1, code.ty)
    return tirx.bitwise_and(tirx.shift_right(code, k.astype(str(code.ty))), one) == one


def _quadratic(cq: Any, ck: Any, v: Any, temp: Any, bias: Any | None, bits: int) -> Any:
    *lead, seq = cq.shape
    keys, dv = ck.shape[-1], v.shape[-1]
    shared = _static(temp.shape[0]) == 1

    def logit(*idx):
        *t, i, j = idx
        tau = temp(0 if shared else t[-1])
        value = fence(tau * _score(cq(*t, i), ck(*t, j), bits).astype("float32"))
        return value if bias is None else value + bias(*_bcast(bias.shape, idx))

    lg = te.compute((*lead, seq, keys), logit, name="ba_logits")
    j1 = te.reduce_axis((0, keys), name="j")
    mx = te.compute((*lead, seq), lambda *r: te.max(lg(*r, j1), axis=j1), name="ba_max")
    e = te.compute(lg.shape, lambda *idx: exp_neg_tir(lg(*idx) - mx(*idx[:-1])), name="ba_exp")
    j2 = te.reduce_axis((0, keys), name="j")
    den = te.compute((*lead, seq), lambda *r: te.sum(e(*r, j2), axis=j2), name="ba_den")
    j3 = te.reduce_axis((0, keys), name="j")

    def weighted(*idx):
        *t, i, d = idx
        return te.sum(fence(e(*t, i, j3) * v(*t, j3, d)), axis=j3)

    num = te.compute((*lead, seq, dv), weighted, name="ba_num")
    return te.compute(num.shape, lambda *idx: num(*idx) * div(_f(1), den(*idx[:-1])),
                      name="binary_attention")


def _linear(cq: Any, ck: Any, v: Any, bias: Any | None, bits: int) -> Any:
    *lead, seq = cq.shape
    keys, dv = ck.shape[-1], v.shape[-1]
    c = _f(bits + 1)
    if bias is None:
        w = lambda *idx: _f(1)                                           # noqa: E731
        u = v
    else:
        wt = te.compute((*lead, keys), lambda *idx: exp_neg_tir(
            bias(*_bcast(bias.shape, (*idx[:-1], 0, idx[-1])))), name="ba_w")
        w = wt
        u = te.compute(v.shape, lambda *idx: fence(wt(*idx[:-1]) * v(*idx)), name="ba_u")
    ja, jb, jc, jd = (te.reduce_axis((0, keys), name="j") for _ in range(4))

    def gsum(*idx):
        *t, k, d = idx
        x = u(*t, ja, d)
        return te.sum(tirx.Select(_bit(ck(*t, ja), k), x, -x), axis=ja)

    gm = te.compute((*lead, bits, dv), gsum, name="ba_g")

    def ksum(*idx):
        *t, k = idx
        x = w(*t, jb)
        return te.sum(tirx.Select(_bit(ck(*t, jb), k), x, -x), axis=jb)

    g = te.compute((*lead, bits), ksum, name="ba_ksum")
    vs = te.compute((*lead, dv), lambda *idx: te.sum(u(*idx[:-1], jc, idx[-1]), axis=jc),
                    name="ba_vsum")
    ws = te.compute(tuple(lead), lambda *t: te.sum(w(*t, jd), axis=jd), name="ba_wsum")
    k1, k2 = te.reduce_axis((0, bits), name="k"), te.reduce_axis((0, bits), name="k")

    def qnum(*idx):
        *t, i, d = idx
        x = gm(*t, k1, d)
        return te.sum(tirx.Select(_bit(cq(*t, i), k1), x, -x), axis=k1)

    num = te.compute((*lead, seq, dv), qnum, name="ba_num")
    den = te.compute((*lead, seq), lambda *r: te.sum(tirx.Select(
        _bit(cq(*r), k2), g(*r[:-1], k2), -g(*r[:-1], k2)), axis=k2), name="ba_den")

    def out(*idx):
        *t, i, d = idx
        n = num(*idx) + fence(c * vs(*t, d))
        return n * div(_f(1), den(*t, i) + fence(c * ws(*t)))

    return te.compute(num.shape, out, name="binary_attention")


def te_compute(cq: Any, ck: Any, v: Any, temperature: Any | None = None, bias: Any | None = None,
               *, bits: int, form: str = "quadratic") -> Any:
    """TVM TE BinaryAttention: codes [..., H, S], [..., H, T] of ``code_dtype(bits)``, V float32
    [..., H, T, Dv], the optional temperature [Hp] and bias -> float32 [..., H, S, Dv]."""
    code_dtype(bits)
    if check_form(form) == "quadratic":
        if temperature is None:
            raise ValueError("BinaryAttention quadratic form needs a Temperature input")
        return _quadratic(cq, ck, v, temperature, bias, bits)
    return _linear(cq, ck, v, bias, bits)


def _extent_product(sch: Any, block: Any) -> float:
    """Iterations of ``block`` (inf when a loop extent is symbolic)."""
    n = 1
    for loop in sch.get_loops(block):
        e = _static(sch.get(loop).extent)
        if e is None:
            return float("inf")
        n *= e
    return n


def _vectorize_inner(sch: Any, block: Any, reduce_loop: Any, col: Any) -> None:
    """Move ``reduce_loop`` (keys or bits) outside the spatial loop ``col`` (value columns),
    initialize the accumulators before it, and vectorize the columns when their count is a
    static multiple of 4 (8 per vector where it divides)."""
    sch.reorder(reduce_loop, col)
    n = _static(sch.get(col).extent)
    if n is not None and n % 4 == 0:
        _outer, lane = sch.split(col, factors=[None, 8 if n % 8 == 0 else 4])
        sch.vectorize(lane)
    init = sch.decompose_reduction(block, reduce_loop)
    if n is not None and n % 4 == 0:
        init_col = sch.get_loops(init)[-1]
        _outer, lane = sch.split(init_col, factors=[None, 8 if n % 8 == 0 else 4])
        sch.vectorize(lane)


def _schedule_quadratic(sch: Any) -> None:
    out = sch.get_sblock("binary_attention")
    *outer, _col = sch.get_loops(out)
    work = _extent_product(sch, sch.get_sblock("ba_logits"))
    rows = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    if work >= PARALLEL_MIN_WORK:
        sch.parallel(rows)
    for name in ("ba_num", "ba_den", "ba_exp", "ba_max", "ba_logits"):
        sch.compute_at(sch.get_sblock(name), rows)
    num = sch.get_sblock("ba_num")
    col, j = sch.get_loops(num)[-2:]
    _vectorize_inner(sch, num, j, col)


def _schedule_linear(sch: Any, has_bias: bool) -> None:
    out = sch.get_sblock("binary_attention")
    *outer, row, _col = sch.get_loops(out)
    work = _extent_product(sch, sch.get_sblock("ba_g"))
    heads = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    if work >= PARALLEL_MIN_WORK:
        sch.parallel(heads)
    for name in ("ba_num", "ba_den"):
        sch.compute_at(sch.get_sblock(name), row)
    producers = ["ba_g", "ba_ksum", "ba_vsum", "ba_wsum"] + (["ba_u", "ba_w"] if has_bias else [])
    for name in producers:
        sch.compute_at(sch.get_sblock(name), heads)
    g = sch.get_sblock("ba_g")
    k, d, j = sch.get_loops(g)[-3:]
    sch.reorder(j, k, d)
    _vectorize_inner(sch, g, j, d)
    num = sch.get_sblock("ba_num")
    col, k = sch.get_loops(num)[-2:]
    _vectorize_inner(sch, num, k, col)


def schedule(func: Any, form: str, has_bias: bool) -> Any:
    """The scheduled form of the PrimFunc of :func:`te_compute` (module docstring), marked
    scheduled and opaque to fusion."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    if form == "quadratic":
        _schedule_quadratic(sch)
    else:
        _schedule_linear(sch, has_bias)
    return sch.mod["main"].with_attrs({"tirx.is_scheduled": True, "op_pattern": 8})


def gpu_func(func: Any) -> Any:
    """The CUDA kernel for a kernel of this op (module docstring)."""
    from tvm import s_tir

    from edgert.ops._common import gpu

    kwargs = gpu.kwargs_of(func)
    has_temp, has_bias = kwargs.pop("has_temperature"), kwargs.pop("has_bias")

    def compute(cq: Any, ck: Any, v: Any, *rest: Any) -> Any:
        it = iter(rest)
        temp = next(it) if has_temp else None
        bias = next(it) if has_bias else None
        return te_compute(cq, ck, v, temp, bias, **kwargs)

    sch = s_tir.Schedule(gpu.rebuild(func, compute))
    out = sch.get_sblock("binary_attention")
    if kwargs["form"] == "quadratic":
        *outer, _col = sch.get_loops(out)
        thread = gpu.bind_threads(sch, sch.fuse(*outer) if len(outer) > 1 else outer[0])
        for name in ("ba_exp", "ba_logits"):
            sch.compute_inline(sch.get_sblock(name))
        _at_local(sch, ("ba_num", "ba_den", "ba_max"), thread)
    else:
        *outer, row, _col = sch.get_loops(out)
        thread = gpu.bind_threads(sch, sch.fuse(*outer) if len(outer) > 1 else outer[0])
        for name in ("ba_u", "ba_w") if has_bias else ():
            sch.compute_inline(sch.get_sblock(name))
        _at_local(sch, ("ba_num", "ba_den"), row)
        _at_local(sch, ("ba_g", "ba_ksum", "ba_vsum", "ba_wsum"), thread)
    return gpu.finish(sch)


def _at_local(sch: Any, names: tuple, loop: Any) -> None:
    """Compute the blocks ``names`` (consumers first) under ``loop``, into local memory."""
    for name in names:
        block = sch.get_sblock(name)
        sch.compute_at(block, loop)
        sch.set_scope(block, 0, "local")


class Converter(EdgertConverter):
    """``edgert.BinaryAttention``: the TE compute of the node's form, replaced by its
    :func:`schedule`. Absent optional inputs keep their places (the temperature may be absent
    while a bias is given)."""

    op = OP

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):  # noqa: D102 (the frontend's entry point)
        required, (temp, bias) = optional_inputs(bb, inputs, 3, 2)
        kwargs = OP.node_kwargs(attrs_of(attr))
        marks = {**kwargs, "has_temperature": temp is not None, "has_bias": bias is not None}
        return emit_scheduled(
            bb, te_compute, required, [temp, bias], OP.folder,
            lambda func: mark(schedule(func, kwargs["form"], bias is not None), OP.folder, marks),
            **kwargs)
