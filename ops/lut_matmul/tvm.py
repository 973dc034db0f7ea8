"""``LutMatMul`` on TVM: the generic TE compute and the Relax converter of the ONNX node.

:func:`te_compute` states the op in TE, stage by stage (tables, table scale / shift, lookup
sums, combine; ``dequant = 1``: the dequantized weight, then a matmul), for every target.
:func:`emit` (and the frontend class :class:`Converter`) turns an ``edgert.LutMatMul``
node into a ``call_tir`` of that compute, marked with
:func:`edgert.ops.lut_matmul.tvm_rewrite.primfunc_attrs` so that the CPU schedules
(:mod:`edgert.ops.lut_matmul.tvm_x86`, :mod:`edgert.ops.lut_matmul.tvm_arm`) can replace it by
their kernels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

from edgert.errors import ArtifactError
from edgert.ops.lut_matmul.layout import G, INT8_SHIFT_LIMITS, LutLayout, table_bits_for
from edgert.ops.lut_matmul.spec import zero_constant
from edgert.ops._common.relax_util import attrs_of, node_name

PRIMFUNC_NAME = "lutmatmul"
"""Name hint of the generic PrimFunc (compiled libraries carry it in their symbol names)."""


class _TeOperands:
    """The TE operands of one LutMatMul and the index expressions every stage shares."""

    def __init__(self, a: Any, planes: Any, zero_points: Any, layout: LutLayout) -> None:
        from tvm import tirx

        self.tirx = tirx
        self.a, self.planes, self.zero_points, self.layout = a, planes, zero_points, layout
        self.lead = list(a.shape[:-1])
        self.nl = len(self.lead)
        self.acc_t = "float32" if str(a.dtype) == "float32" else "int32"
        self.gf, self.tf = layout.group_size // G, layout.tile_k // G

    def x(self, li: Any, f: Any, j: int) -> Any:
        """Activation ``j`` of 4-group ``f`` of row ``li``, in the accumulator type."""
        return self.a(*li, f * G + j).astype(self.acc_t)

    def abs_sum(self, li: Any, f: Any) -> Any:
        """``((|x0| + |x1|) + |x2|) + |x3|`` of 4-group ``f`` (the reference's order)."""
        abs_ = self.tirx.abs
        return ((abs_(self.x(li, f, 0)) + abs_(self.x(li, f, 1))) + abs_(self.x(li, f, 2))) \
            + abs_(self.x(li, f, 3))

    def nibble(self, i: Any, f: Any, n: Any) -> Any:
        """``nibble_i(f, n)`` read from the layout-v1 packed bytes, int32."""
        tirx, tn = self.tirx, self.layout.tile_n
        tn2 = tn // 2
        byte = self.planes[n // tn, f // self.tf, i, f % self.tf, n % tn % tn2].astype("int32")
        return tirx.bitwise_and(tirx.shift_right(byte, (n % tn // tn2) * 4), 15)

    def zc(self, g: Any, n: Any) -> Any:
        """``zc = 2**b - 1 - 2 z`` of (group, column), in the accumulator type."""
        tirx, b, zp = self.tirx, self.layout.bits, self.zero_points
        if zp is None:
            return tirx.const(int(zero_constant(self.layout, None)[0, 0]), self.acc_t)
        if str(zp.dtype) == "float32":
            return (tirx.const(float((1 << b) - 1), "float32")
                    - tirx.const(2.0, "float32") * zp[g, n])
        return (tirx.const((1 << b) - 1, "int32")
                - 2 * zp[g, n].astype("int32")).astype(self.acc_t)

    def z2(self, g: Any, n: Any) -> Any:
        """``z2 = 2 z`` of (group, column), in the accumulator type."""
        tirx, b, zp = self.tirx, self.layout.bits, self.zero_points
        if zp is None:
            return tirx.const((1 << b) if b >= 2 else 1, self.acc_t)
        if str(zp.dtype) == "float32":
            return tirx.const(2.0, "float32") * zp[g, n]
        return 2 * zp[g, n].astype("int32")


def te_compute(a: Any, planes: Any, scales: Any = None, zero_points: Any = None, *,
               layout: LutLayout, table_bits: int | None = None, dequant: bool = False) -> Any:
    """TVM TE LutMatMul: ``a`` [..., M, K] float32 or int8, ``planes`` uint8 packed,
    ``scales`` float32 [K/group_size, N] (float a), ``zero_points`` uint8, float32 (float a)
    or None.
    Generic compute (stages: tables, table scale/shift, lookup sums, combine; ``dequant``: the
    dequantized weight, then a matmul); the result is float32 or int32 [..., M, N]."""
    from tvm import te

    tb = table_bits_for(np.dtype(str(a.dtype)), table_bits)
    if [int(d) for d in planes.shape] != list(layout.planes_shape) or int(a.shape[-1]) != layout.K:
        raise ArtifactError(f"LutMatMul TE operands {list(a.shape)}, {list(planes.shape)} do "
                            f"not match the layout {layout.to_json()}")
    ops = _TeOperands(a, planes, zero_points, layout)
    if dequant:
        return _te_dequant(te, ops, scales)
    table = _te_tables(te, ops)
    if ops.acc_t == "float32":
        return _te_float(te, ops, table, scales)
    return _te_int(te, ops, table, tb)


def _te_tables(te: Any, ops: _TeOperands) -> Any:
    """``T[..., f, e]`` [..., K/4, 16]: entries ``((t0 + t1) + t2) + t3``, mirrored for e >= 8."""
    tirx = ops.tirx

    def body(*idx: Any) -> Any:
        *li, f, e = idx
        base = tirx.Select(e < 8, e, 15 - e)
        v = None
        for j in range(G):
            xj = ops.x(li, f, j)
            term = (-xj if j == G - 1 else
                    tirx.Select(tirx.bitwise_and(tirx.shift_right(base, j), 1) == 1, xj, -xj))
            v = term if v is None else v + term
        return tirx.Select(e < 8, v, -v)

    return te.compute((*ops.lead, ops.layout.K // G, 16), body, name="lut_table")


def _te_float(te: Any, ops: _TeOperands, table: Any, scales: Any) -> Any:
    """Float32 activations: int8 tables per weight group, lookup sums, the float epilogue."""
    tirx, layout, lead, nl, gf = ops.tirx, ops.layout, ops.lead, ops.nl, ops.gf
    f32 = "float32"
    rf = te.reduce_axis((0, gf), name="rf")
    tmax = te.compute((*lead, layout.n_groups),
                      lambda *i: te.max(ops.abs_sum(i[:-1], i[-1] * gf + rf), axis=rf),
                      name="lut_absmax")
    ts = te.compute(tmax.shape, lambda *i: tmax(*i) / tirx.const(127.0, f32), name="lut_scale")

    def q_body(*idx: Any) -> Any:
        *li, f, e = idx
        s = ts(*li, f // gf)
        d = tirx.Select(s > tirx.const(0.0, f32), s, tirx.const(1.0, f32))
        v = tirx.nearbyint(table(*li, f, e) / d)
        return tirx.max(tirx.min(v, tirx.const(127.0, f32)),
                        tirx.const(-127.0, f32)).astype("int8")

    q = te.compute(table.shape, q_body, name="lut_qtable")
    rg, ri = te.reduce_axis((0, gf), name="rg"), te.reduce_axis((0, layout.bits), name="ri")
    lsum = te.compute(
        (*lead, layout.n_groups, layout.N),
        lambda *i: te.sum(tirx.shift_left(
            q(*i[:nl], i[nl] * gf + rg, ops.nibble(ri, i[nl] * gf + rg, i[nl + 1])).astype("int32"),
            ri), axis=[rg, ri]), name="lut_lookup")
    rr = te.reduce_axis((0, gf), name="rr")
    rsum = te.compute((*lead, layout.n_groups),
                      lambda *i: te.sum(table(*i[:-1], i[-1] * gf + rr, 15), axis=rr),
                      name="lut_rowsum")
    rgo = te.reduce_axis((0, layout.n_groups), name="rgo")
    half = tirx.const(0.5, f32)

    def out_body(*idx: Any) -> Any:
        *li, n = idx
        inner = ts(*li, rgo) * lsum(*li, rgo, n).astype(f32) + ops.zc(rgo, n) * rsum(*li, rgo)
        return te.sum(scales[rgo, n] * (inner * half), axis=rgo)

    return te.compute((*lead, layout.N), out_body, name="lut_matmul")


def _te_int8_tables(te: Any, ops: _TeOperands, table: Any) -> tuple[Any, Any]:
    """int8 tables of int8 activations: ``(q, shift)``, ``q = round_half_even(T / 2**sh)``
    with one power-of-two shift ``sh`` [..., K/tile_k] per K tile."""
    tirx, layout, lead, tf = ops.tirx, ops.layout, ops.lead, ops.tf
    rt = te.reduce_axis((0, tf), name="rt")
    tmax = te.compute((*lead, layout.K // layout.tile_k),
                      lambda *i: te.max(ops.abs_sum(i[:-1], i[-1] * tf + rt), axis=rt),
                      name="lut_absmax")
    shift = te.compute(tmax.shape, lambda *i: sum(
        (tmax(*i) > lim).astype("int32") for lim in INT8_SHIFT_LIMITS), name="lut_shift")

    def q_body(*idx: Any) -> Any:
        *li, f, e = idx
        s = shift(*li, f // tf)
        v = table(*li, f, e)
        half = tirx.shift_left(tirx.const(1, "int32"), tirx.max(s - 1, 0))
        r = tirx.shift_right(v + half - 1 + tirx.bitwise_and(tirx.shift_right(v, s), 1), s)
        return tirx.Select(s == 0, v, r).astype("int16")

    return te.compute(table.shape, q_body, name="lut_qtable"), shift


def _te_int(te: Any, ops: _TeOperands, table: Any, table_bits: int) -> Any:
    """int8 activations: exact (16) or shifted int8 (8) tables, lookup sums, the zero term."""
    tirx, layout, lead, nl, tf = ops.tirx, ops.layout, ops.lead, ops.nl, ops.tf
    if table_bits == 8:
        q, shift = _te_int8_tables(te, ops, table)

        def tile_shift(li: Any, f: Any) -> Any:
            return shift(*li, f // tf)
    else:
        q = table

        def tile_shift(li: Any, f: Any) -> Any:
            return tirx.const(0, "int32")

    rk = te.reduce_axis((0, layout.K // G), name="rk")
    ri = te.reduce_axis((0, layout.bits), name="ri")
    lsum = te.compute(
        (*lead, layout.N),
        lambda *i: te.sum(tirx.shift_left(
            q(*i[:nl], rk, ops.nibble(ri, rk, i[nl])).astype("int32"),
            ri + tile_shift(i[:nl], rk)), axis=[rk, ri]), name="lut_lookup")
    gs = layout.group_size
    rr = te.reduce_axis((0, gs), name="rr")
    rsum = te.compute((*lead, layout.n_groups),
                      lambda *i: te.sum(ops.a(*i[:-1], i[-1] * gs + rr).astype("int32"),
                                        axis=rr), name="lut_rowsum")
    rgo = te.reduce_axis((0, layout.n_groups), name="rgo")
    zterm = te.compute((*lead, layout.N),
                       lambda *i: te.sum(ops.zc(rgo, i[nl]) * rsum(*i[:nl], rgo), axis=rgo),
                       name="lut_zero")
    return te.compute((*lead, layout.N), lambda *i: lsum(*i) + zterm(*i), name="lut_matmul")


def _te_dequant(te: Any, ops: _TeOperands, scales: Any) -> Any:
    """``dequant = 1``: the weight ``s * ((2u - z2) * 0.5)`` (float) or ``2u - z2`` (int32)
    as a [K, N] stage, then ``a @ w`` summed in float32 / int32."""
    tirx, layout, acc_t = ops.tirx, ops.layout, ops.acc_t
    b, gs = layout.bits, layout.group_size

    def u(k: Any, n: Any) -> Any:
        return sum(tirx.shift_left(tirx.bitwise_and(
            tirx.shift_right(ops.nibble(i, k // G, n), k % G), 1), i) for i in range(b))

    if acc_t == "float32":
        w = te.compute((layout.K, layout.N), lambda k, n: scales[k // gs, n] * (
            (tirx.const(2.0, "float32") * u(k, n).astype("float32") - ops.z2(k // gs, n))
            * tirx.const(0.5, "float32")), name="lut_dequant")
    else:
        w = te.compute((layout.K, layout.N), lambda k, n: 2 * u(k, n) - ops.z2(k // gs, n),
                       name="lut_dequant")
    rk = te.reduce_axis((0, layout.K), name="rk")
    return te.compute((*ops.lead, layout.N), lambda *i: te.sum(
        ops.a(*i[:-1], rk).astype(acc_t) * w[rk, i[-1]], axis=rk), name="lut_matmul")


# ---------------------------------------------------------------- the Relax converter

def emit(bb: Any, inputs: list, attrs: dict[str, Any], node: str = "?") -> Any:
    """Emit one ``edgert.LutMatMul(A, W, scales?, zero_points?)`` node (Relax ``inputs``,
    ``None`` for an absent optional one; ONNX ``attrs`` by name) as a ``call_tir`` of
    :func:`te_compute`, marked for the CPU schedules (``edgert.op = "lutmatmul"`` with its
    layout, :func:`~edgert.ops.lut_matmul.tvm_rewrite.primfunc_attrs`).

    Raises:
        ValueError: invalid layout attributes (naming ``node``).
    """
    from edgert.ops.lut_matmul.tvm_rewrite import primfunc_attrs

    try:
        layout = LutLayout.from_attrs(attrs)
    except ArtifactError as e:
        raise ValueError(f"LutMatMul {node}: {e}") from None
    table_bits = int(attrs.get("table_bits", 0)) or None
    dequant = bool(attrs.get("dequant", 0))
    a, w = bb.normalize(inputs[0]), bb.normalize(inputs[1])
    scales = inputs[2] if len(inputs) > 2 else None
    zps = inputs[3] if len(inputs) > 3 else None
    extra = [bb.normalize(x) for x in (scales, zps) if x is not None]

    def compute(at: Any, wt: Any, *rest: Any) -> Any:
        it = iter(rest)
        st = next(it) if scales is not None else None
        zt = next(it) if zps is not None else None
        return te_compute(at, wt, st, zt, layout=layout, table_bits=table_bits, dequant=dequant)

    tb = table_bits_for(np.dtype(str(a.ty.dtype)), table_bits)
    return bb.emit_te(compute, a, w, *extra, primfunc_name_hint=PRIMFUNC_NAME,
                      primfunc_attrs=primfunc_attrs(layout, tb, scales is not None,
                                                    zps is not None, dequant))


class Converter(OnnxOpConverter):
    """The TVM ONNX-frontend converter of ``edgert.LutMatMul`` (opset 1): :func:`emit` with
    the node's attributes (the frontend's ``tvm_custom`` entry gives the node name)."""

    @classmethod
    def _impl_v1(cls, bb: Any, inputs: list, attr: dict[str, Any], params: Any) -> Any:
        return emit(bb, inputs, attrs_of(attr), node_name(attr))
