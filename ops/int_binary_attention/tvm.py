"""TVM side of ``IntBinaryAttention``: the TE computes of both forms, their CPU schedule and the
Relax converter.

The computes are the spec's integer arithmetic (:mod:`edgert.ops.int_binary_attention.spec`):
the codes as packed words (a sum of distinct powers of two over the bits, which is their OR),
the scores as ``b - 2 popcount(cq xor ck)`` (:func:`edgert.ops.binary_attention.tvm.te_scores`'
arithmetic), the linear sums in int32 and the rounded division in int64.

Schedule (:func:`schedule`, the same for x86 and aarch64):

- quadratic: the key codes first (one loop over keys, each code's projection sums under it);
  then one loop over query rows (batch, head, row fused; parallel when the work is large
  enough), the row's code under it, then a scalar loop over keys with one xor and one
  ``popcnt`` per key on x86 (``cnt`` on aarch64).
- linear: one loop over (batch, head) (parallel when large); under it the key codes,
  ``H^T V`` (keys outside, the value columns vectorized), the key sums, then per query row its
  code, the signed sums over bits and the division.

CUDA (:func:`gpu_func`): the codes one thread per vector (the projection sums in registers),
each a kernel of its own; then the quadratic form one thread per score (``__popc`` of the
codes' xor), the linear form one thread per (batch, head), its bit sums in local memory, then
its rows. Integer arithmetic only, so the GPU gives the spec's bits whatever the flags.

Each kernel is marked ``tirx.is_scheduled`` (the CPU pipeline's rules leave it alone) and
opaque to operator fusion (``op_pattern`` 8).
"""

from __future__ import annotations

from typing import Any

from tvm import te, tirx

from edgert.ops._common.gpu import mark
from edgert.ops._common.relax_util import (EdgertConverter, attrs_of, emit_scheduled,
                                           optional_inputs)
from edgert.ops.binary_attention.tvm import (PARALLEL_MIN_WORK, _bit, _extent_product, _score,
                                             _static, _vectorize_inner)
from edgert.ops.hash_codes.spec import code_dtype
from edgert.ops.int_binary_attention import OP
from edgert.ops.int_binary_attention.spec import DEFAULT_FRAC, check_form


def _i32(v: int) -> Any:
    return tirx.const(int(v), "int32")


def te_codes(x: Any, proj: Any, bits: int, name: str) -> Any:
    """Packed codes ``[..., H, S]`` of ``code_dtype(bits)`` of int8 ``x`` [..., H, S, D] under
    int8 ``proj`` [Hp, b, D] (blocks ``<name>_z`` and ``<name>_codes``)."""
    *lead, seq, dim = x.shape
    shared = _static(proj.shape[0]) == 1
    d = te.reduce_axis((0, dim), name="d")

    def project(*idx):
        *t, s, k = idx
        w = proj(0 if shared else t[-1], k, d).astype("int32")
        return te.sum(x(*t, s, d).astype("int32") * w, axis=d)

    z = te.compute((*lead, seq, bits), project, name=f"{name}_z")
    dt = str(code_dtype(bits))
    kk = te.reduce_axis((0, bits), name="k")
    one, zero = tirx.const(1, dt), tirx.const(0, dt)
    return te.compute((*lead, seq), lambda *idx: te.sum(tirx.Select(
        z(*idx, kk) >= 0, tirx.shift_left(one, kk.astype(dt)), zero), axis=kk),
        name=f"{name}_codes")


def _quadratic(cq: Any, ck: Any, mult: Any | None, bits: int) -> Any:
    *lead, seq = cq.shape
    keys = ck.shape[-1]

    def body(*idx):
        *t, i, j = idx
        s = _score(cq(*t, i), ck(*t, j), bits)
        if mult is None:
            return s
        return mult(0 if _static(mult.shape[0]) == 1 else t[-1]) * s

    return te.compute((*lead, seq, keys), body, name="int_binary_attention")


def _linear(cq: Any, ck: Any, v: Any, bits: int, frac: int) -> Any:
    *lead, seq = cq.shape
    keys, dv = ck.shape[-1], v.shape[-1]
    c = _i32(bits + 1)
    ja, jb, jc = (te.reduce_axis((0, keys), name="j") for _ in range(3))

    def gsum(*idx):
        *t, k, d = idx
        x = v(*t, ja, d).astype("int32")
        return te.sum(tirx.Select(_bit(ck(*t, ja), k), x, -x), axis=ja)

    gm = te.compute((*lead, bits, dv), gsum, name="iba_g")
    g = te.compute((*lead, bits), lambda *idx: te.sum(tirx.Select(
        _bit(ck(*idx[:-1], jb), idx[-1]), _i32(1), _i32(-1)), axis=jb), name="iba_ksum")
    vs = te.compute((*lead, dv), lambda *idx: te.sum(
        v(*idx[:-1], jc, idx[-1]).astype("int32"), axis=jc), name="iba_vsum")
    k1, k2 = te.reduce_axis((0, bits), name="k"), te.reduce_axis((0, bits), name="k")

    def qnum(*idx):
        *t, i, d = idx
        x = gm(*t, k1, d)
        return te.sum(tirx.Select(_bit(cq(*t, i), k1), x, -x), axis=k1)

    num = te.compute((*lead, seq, dv), qnum, name="iba_num")
    den = te.compute((*lead, seq), lambda *r: te.sum(tirx.Select(
        _bit(cq(*r), k2), g(*r[:-1], k2), -g(*r[:-1], k2)), axis=k2), name="iba_den")
    scale = tirx.const(1 << (frac + 1), "int64")
    two = tirx.const(2, "int64")

    def out(*idx):
        *t, i, d = idx
        n = (num(*idx) + c * vs(*t, d)).astype("int64")
        e = (den(*t, i) + c * keys.astype("int32")).astype("int64")
        return tirx.floordiv(n * scale + e, two * e).astype("int32")

    return te.compute(num.shape, out, name="int_binary_attention")


def te_compute(q: Any, k: Any, proj: Any, mult: Any | None = None, v: Any | None = None, *,
               bits: int, form: str = "quadratic", frac: int = DEFAULT_FRAC) -> Any:
    """TVM TE IntBinaryAttention: int8 Q [..., H, S, D], K [..., H, T, D], Proj [Hp, b, D], the
    optional int32 Multiplier [Hp] and int8 V [..., H, T, Dv] -> int32 [..., H, S, T]
    (quadratic) or [..., H, S, Dv] (linear)."""
    cq, ck = te_codes(q, proj, bits, "iba_q"), te_codes(k, proj, bits, "iba_k")
    if check_form(form) == "quadratic":
        return _quadratic(cq, ck, mult, bits)
    if v is None:
        raise ValueError("IntBinaryAttention linear form needs a V input")
    return _linear(cq, ck, v, bits, int(frac))


def _codes_under(sch: Any, name: str, loop: Any) -> None:
    """The codes block ``<name>_codes`` and its projection sums computed under ``loop``."""
    sch.compute_at(sch.get_sblock(f"{name}_codes"), loop)
    sch.compute_at(sch.get_sblock(f"{name}_z"), loop)


def _schedule_quadratic(sch: Any) -> None:
    out = sch.get_sblock("int_binary_attention")
    *outer, _keys = sch.get_loops(out)
    work = _extent_product(sch, out)
    rows = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    if work >= PARALLEL_MIN_WORK:
        sch.parallel(rows)
    _codes_under(sch, "iba_q", rows)
    codes = sch.get_sblock("iba_k_codes")
    vec = sch.get_loops(codes)[-2]                     # one key vector (the bits reduce inside)
    sch.compute_at(sch.get_sblock("iba_k_z"), vec)


def _schedule_linear(sch: Any) -> None:
    out = sch.get_sblock("int_binary_attention")
    *outer, row, _col = sch.get_loops(out)
    work = _extent_product(sch, sch.get_sblock("iba_g"))
    heads = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    if work >= PARALLEL_MIN_WORK:
        sch.parallel(heads)
    for name in ("iba_num", "iba_den"):
        sch.compute_at(sch.get_sblock(name), row)
    _codes_under(sch, "iba_q", row)
    for name in ("iba_g", "iba_ksum", "iba_vsum"):
        sch.compute_at(sch.get_sblock(name), heads)
    _codes_under(sch, "iba_k", heads)
    g = sch.get_sblock("iba_g")
    k, d, j = sch.get_loops(g)[-3:]
    sch.reorder(j, k, d)
    _vectorize_inner(sch, g, j, d)
    num = sch.get_sblock("iba_num")
    col, k = sch.get_loops(num)[-2:]
    _vectorize_inner(sch, num, k, col)


def schedule(func: Any, form: str) -> Any:
    """The scheduled form of the PrimFunc of :func:`te_compute` (module docstring), marked
    scheduled and opaque to fusion."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    if form == "quadratic":
        _schedule_quadratic(sch)
    else:
        _schedule_linear(sch)
    return sch.mod["main"].with_attrs({"tirx.is_scheduled": True, "op_pattern": 8})


def _codes_on_threads(sch: Any, name: str) -> None:
    """The codes block ``<name>_codes`` one thread per vector, its sums in registers."""
    from edgert.ops._common import gpu

    codes = sch.get_sblock(f"{name}_codes")
    *spatial, _bits = sch.get_loops(codes)
    thread = gpu.bind_threads(sch, sch.fuse(*spatial) if len(spatial) > 1 else spatial[0])
    z = sch.get_sblock(f"{name}_z")
    sch.compute_at(z, thread)
    sch.set_scope(z, 0, "local")


def gpu_func(func: Any) -> Any:
    """The CUDA kernels for a kernel of this op (module docstring)."""
    from tvm import s_tir

    from edgert.ops._common import gpu

    kwargs = gpu.kwargs_of(func)
    has_mult, has_v = kwargs.pop("has_multiplier"), kwargs.pop("has_v")

    def compute(q: Any, k: Any, proj: Any, *rest: Any) -> Any:
        it = iter(rest)
        mult = next(it) if has_mult else None
        v = next(it) if has_v else None
        return te_compute(q, k, proj, mult, v, **kwargs)

    sch = s_tir.Schedule(gpu.rebuild(func, compute))
    out = sch.get_sblock("int_binary_attention")
    if kwargs["form"] == "quadratic":
        loops = sch.get_loops(out)
        gpu.bind_threads(sch, sch.fuse(*loops))
    else:
        *outer, row, _col = sch.get_loops(out)
        thread = gpu.bind_threads(sch, sch.fuse(*outer) if len(outer) > 1 else outer[0])
        for name in ("iba_num", "iba_den"):
            block = sch.get_sblock(name)
            sch.compute_at(block, row)
            sch.set_scope(block, 0, "local")
        for name in ("iba_g", "iba_ksum", "iba_vsum"):
            block = sch.get_sblock(name)
            sch.compute_at(block, thread)
            sch.set_scope(block, 0, "local")
    _codes_on_threads(sch, "iba_q")
    _codes_on_threads(sch, "iba_k")
    return gpu.finish(sch)


class Converter(EdgertConverter):
    """``edgert.IntBinaryAttention``: the TE compute of the node's form, replaced by its
    :func:`schedule`. Absent optional inputs keep their places (the linear form has V but no
    Multiplier)."""

    op = OP

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):  # noqa: D102 (the frontend's entry point)
        required, (mult, v) = optional_inputs(bb, inputs, 3, 2)
        kwargs = OP.node_kwargs(attrs_of(attr))
        marks = {**kwargs, "has_multiplier": mult is not None, "has_v": v is not None}
        return emit_scheduled(
            bb, te_compute, required, [mult, v], OP.folder,
            lambda func: mark(schedule(func, kwargs["form"]), OP.folder, marks), **kwargs)
