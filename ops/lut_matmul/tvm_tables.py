"""The LutMatMul table kernel (portable TIR: scalars and 8-lane vectors, no intrinsics).

Shared by the x86 (:mod:`edgert.ops.lut_matmul.tvm_x86`) and the aarch64
(:mod:`edgert.ops.lut_matmul.tvm_arm`) lookup kernels. ``lut_tables_<isa>_*``, parallel over
activation rows when there are two or more: per row and 4-group the 8 entries
``((t0 + t1) + t2) + t3`` (``t_j = +-x_j``), mirrored ``T[15 - e] = -T[e]``, in the reference's
order of operations (the 8 entries as one float32 / int32 vector, the signs as exact
multiplications by +-1, which LLVM keeps as vector code).

Float32 activations: per weight group the table scale
``ts = max(((|x0| + |x1|) + |x2|) + |x3|) / 127`` and ``q = clip(nearbyint(T / ts))`` as int8
(:func:`edgert.ops.lut_matmul.spec.quantize_float_tables`), plus ``r = sum T[15]`` (float32,
sequential). int8 activations: exact int16 tables stored as two byte planes (low byte read
unsigned, high byte signed; ``table_bits = 16``) or int8 tables with a power-of-two shift per
K tile (``table_bits = 8``), plus the integer row sum per group.

Table bytes ``[R, K/tile_k, TK2, NB, 32]``: the 32 bytes hold the tables of 4-groups ``2*fi2``
(128-bit lane 0) and ``2*fi2 + 1`` (lane 1) of a K tile (``TK2 = ceil(tile_k/8)``; an odd last
4-group is padded with a zero table), so one 32-byte load feeds ``vpshufb`` with two different
tables, one per lane (and one 16-byte ``ldr q`` loads one table on NEON).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from edgert.ops.lut_matmul.layout import LutLayout
from edgert.ops.lut_matmul.tvm_pack_x86 import geometry


@dataclass(frozen=True)
class TableGeometry:
    """The table kernel's constants: K, weight groups ``NG`` of ``GS`` rows, K tiles ``KT`` of
    ``TKS`` rows (``TK4`` 4-groups, ``TK2`` pairs), byte planes ``NB`` (2: int16 tables), an
    odd 4-group count per tile (``PAD``), a parallel row loop (``PAR``)."""

    K: int
    NG: int
    GS: int
    KT: int
    TK4: int
    TK2: int
    TKS: int
    NB: int
    PAD: bool
    PAR: bool

    @classmethod
    def of(cls, layout: LutLayout, float_acts: bool, table_bits: int, cores: int
           ) -> TableGeometry:
        kt, tk4, tk2, _, _, _ = geometry(layout)
        return cls(K=layout.K, NG=layout.n_groups, GS=layout.group_size, KT=kt, TK4=tk4,
                   TK2=tk2, TKS=layout.tile_k, NB=table_planes(float_acts, table_bits),
                   PAD=tk4 % 2 == 1, PAR=cores > 1)


def table_planes(float_acts: bool, table_bits: int) -> int:
    """Byte planes of the stored tables: 2 for the int16 tables of int8 activations, else 1."""
    return 2 if (not float_acts and table_bits == 16) else 1


@lru_cache(maxsize=None)
def table_kernel(layout: LutLayout, float_acts: bool, table_bits: int, cores: int,
                 name: str = "lut_tables_x86") -> Any:
    """Tables PrimFunc. Float: ``(A f32 [R, K], TS f32 [R, NG], RS f32 [R, NG], QT i8 [R, KT,
    TK2, 1, 32])``; int8: ``(A i8 [R, K], QT i8 [R, KT, TK2, NB, 32], SH i32 [R, KT], RSUM i32
    [R, NG])`` (output order: see :func:`intermediate_shapes`).

    ``A`` comes twice (the same tensor; the row sums read the second): Relax's
    ``RewriteDataflowReshape`` asks ``HasReshapePattern`` about every ``call_tir`` that reads
    exactly one input, and that analysis fails outright on a kernel without a root block."""
    from tvm.script import tirx as T

    geo = TableGeometry.of(layout, float_acts, table_bits, cores)
    if float_acts:
        kernel = _float_tables_func(T, geo, _float_row(T, geo))
    else:
        kernel = _int_tables_func(T, geo, _int_row(T, geo))
    return kernel.with_attr("global_symbol", name)


def intermediate_shapes(layout: LutLayout, rows: Any, float_acts: bool, table_bits: int
                        ) -> list[tuple[tuple, str]]:
    """Shapes and dtypes of the table kernel's outputs for ``rows`` activation rows, in its
    order (float: TS, RS, QT; int8: QT, SH, RSUM)."""
    kt, _, tk2, _, _, _ = geometry(layout)
    nb = table_planes(float_acts, table_bits)
    if float_acts:
        return [((rows, layout.n_groups), "float32"), ((rows, layout.n_groups), "float32"),
                ((rows, kt, tk2, nb, 32), "int8")]
    return [((rows, kt, tk2, nb, 32), "int8"), ((rows, kt), "int32"),
            ((rows, layout.n_groups), "int32")]


def _vector_helpers(T: Any, geo: TableGeometry) -> tuple[Any, ...]:
    """``(isign, sign, low_byte, high_byte, mirrored, shifted, pos)``: the 8-lane expressions
    and the table byte offset the row macros use."""
    TK4, TK2, KT, NB = geo.TK4, geo.TK2, geo.KT, geo.NB

    def isign(j):
        # int32x8 of -1 / +1: entry e adds +x_j where bit j of e is set
        return T.bitwise_and(T.shift_right(T.Ramp(0, 1, 8), T.Broadcast(j, 8)),
                             T.Broadcast(1, 8)) * T.Broadcast(2, 8) - T.Broadcast(1, 8)

    def sign(j):
        return T.Cast("float32x8", isign(j))

    def low_byte(t):
        # the byte planes of int16 table entries: low (its bits, read unsigned), high (signed)
        return T.bitwise_and(t, T.Broadcast(255, 8))

    def high_byte(t):
        return T.shift_right(t, T.Broadcast(8, 8))

    def mirrored(v):
        # entries 15 .. 8 from the negated entries 0 .. 7 (T[15 - e] = -T[e]), as int8
        return T.Cast("int8x8", T.Shuffle([v], list(range(7, -1, -1))))

    def shifted(t, sv, hvv):
        # round_half_even(t / 2**s) (shift_round_half_even), t itself where s = 0
        return T.Select(sv == T.Broadcast(0, 8), t, T.shift_right(
            t + hvv + T.bitwise_and(T.shift_right(t, sv), T.Broadcast(1, 8)), sv))

    def pos(r, f, nb, e):
        kt = f // TK4
        fi = f % TK4
        return (((r * KT + kt) * TK2 + fi // 2) * NB + nb) * 32 + (fi % 2) * 16 + e

    return isign, sign, low_byte, high_byte, mirrored, shifted, pos


def _float_row(T: Any, geo: TableGeometry) -> Any:
    """Macro ``row(r, Af, A2f, Qf, TSf, RSf)``: float32 row ``r``'s int8 tables, table scales
    and row sums."""
    K, NG, GS, KT, TK2, NB, PAD = geo.K, geo.NG, geo.GS, geo.KT, geo.TK2, geo.NB, geo.PAD
    _, sign, _, _, mirrored, _, pos = _vector_helpers(T, geo)

    @T.macro
    def row(r, Af, A2f, Qf, TSf, RSf):
        for g in range(NG):
            TSf[r * NG + g] = T.float32(0)
            RSf[r * NG + g] = T.float32(0)
            for ff in range(GS // 4):
                f: T.let[T.int32] = g * (GS // 4) + ff
                b0: T.let[T.int64] = r * K + f * 4
                TSf[r * NG + g] = T.max(TSf[r * NG + g], ((T.abs(Af[b0]) + T.abs(Af[b0 + 1]))
                                                          + T.abs(Af[b0 + 2]))
                                        + T.abs(Af[b0 + 3]))
                RSf[r * NG + g] = RSf[r * NG + g] + (((A2f[b0] + A2f[b0 + 1]) + A2f[b0 + 2])
                                                     + A2f[b0 + 3])
            TSf[r * NG + g] = TSf[r * NG + g] / T.float32(127)
            d: T.let[T.float32] = T.Select(TSf[r * NG + g] > T.float32(0), TSf[r * NG + g],
                                           T.float32(1))
            dv: T.let[T.float32x8] = T.Broadcast(d, 8)
            for ff in range(GS // 4):
                f: T.let[T.int32] = g * (GS // 4) + ff
                b0: T.let[T.int64] = r * K + f * 4
                # entries 0..7 at once: +-x_j by the sign vectors (exact), the
                # reference's order of additions; entry 15 - e is -entry e
                v: T.let[T.float32x8] = ((sign(0) * T.Broadcast(Af[b0], 8)
                                          + sign(1) * T.Broadcast(Af[b0 + 1], 8))
                                         + sign(2) * T.Broadcast(Af[b0 + 2], 8)) \
                    - T.Broadcast(Af[b0 + 3], 8)
                q: T.let[T.float32x8] = T.max(T.min(T.nearbyint(v / dv), T.Broadcast(
                    T.float32(127), 8)), T.Broadcast(T.float32(-127), 8))
                p0: T.let[T.int64] = pos(r, f, 0, 0)
                Qf[T.Ramp(p0, 1, 8)] = T.Cast("int8x8", q)
                Qf[T.Ramp(p0 + 8, 1, 8)] = mirrored(-q)
        if PAD:
            for kt in range(KT):
                for e in range(16):
                    Qf[(((r * KT + kt) * TK2 + TK2 - 1) * NB) * 32 + 16 + e] = T.int8(0)
    return row


def _float_tables_func(T: Any, geo: TableGeometry, row: Any) -> Any:
    """The float32 tables PrimFunc around ``row``."""
    K, NG, KT, TK2, NB, PAR = geo.K, geo.NG, geo.KT, geo.TK2, geo.NB, geo.PAR

    @T.prim_func
    def kernel(a_h: T.handle, a2_h: T.handle, ts_h: T.handle, rs_h: T.handle,
               q_h: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        R = T.int64()
        A = T.match_buffer(a_h, (R, K), "float32")
        A2 = T.match_buffer(a2_h, (R, K), "float32")
        Q = T.match_buffer(q_h, (R, KT, TK2, NB, 32), "int8")
        TS = T.match_buffer(ts_h, (R, NG), "float32")
        RS = T.match_buffer(rs_h, (R, NG), "float32")
        Af = T.decl_buffer((R * K,), "float32", data=A.data)
        A2f = T.decl_buffer((R * K,), "float32", data=A2.data)
        Qf = T.decl_buffer((R * KT * TK2 * NB * 32,), "int8", data=Q.data)
        TSf = T.decl_buffer((R * NG,), "float32", data=TS.data)
        RSf = T.decl_buffer((R * NG,), "float32", data=RS.data)
        if PAR and R > 1:               # one row (LLM decode): no pool launch
            for r in T.parallel(R):
                row(r, Af, A2f, Qf, TSf, RSf)
        else:
            for r in range(R):
                row(r, Af, A2f, Qf, TSf, RSf)
    return kernel


def _int_row(T: Any, geo: TableGeometry) -> Any:
    """Macro ``row(r, Af, A2f, Qf, SHf, RSf)``: int8 row ``r``'s tables (two byte planes of
    int16 entries, or int8 entries shifted per K tile), shifts and row sums."""
    K, NG, GS, KT, TK4, TK2, TKS = geo.K, geo.NG, geo.GS, geo.KT, geo.TK4, geo.TK2, geo.TKS
    NB, PAD = geo.NB, geo.PAD
    isign, _, low_byte, high_byte, mirrored, shifted, pos = _vector_helpers(T, geo)

    @T.macro
    def row(r, Af, A2f, Qf, SHf, RSf):
        for g in range(NG):
            RSf[r * NG + g] = 0
            for kk in range(GS):
                RSf[r * NG + g] = RSf[r * NG + g] + T.Cast("int32", A2f[r * K + g * GS + kk])
        for kt in range(KT):
            SHf[r * KT + kt] = 0
            if NB == 1:
                for fi in range(TK4):
                    b0: T.let[T.int64] = r * K + kt * TKS + fi * 4
                    s4: T.let[T.int32] = ((T.abs(T.Cast("int32", Af[b0]))
                                           + T.abs(T.Cast("int32", Af[b0 + 1])))
                                          + T.abs(T.Cast("int32", Af[b0 + 2]))) \
                        + T.abs(T.Cast("int32", Af[b0 + 3]))
                    SHf[r * KT + kt] = T.max(SHf[r * KT + kt], s4)
                mx: T.let[T.int32] = SHf[r * KT + kt]
                SHf[r * KT + kt] = T.Cast("int32", mx > 127) + T.Cast("int32", mx > 254) \
                    + T.Cast("int32", mx > 508)
            s: T.let[T.int32] = SHf[r * KT + kt]
            hv: T.let[T.int32] = T.shift_left(1, T.max(s - 1, 0))
            sv: T.let[T.int32x8] = T.Broadcast(s, 8)
            hvv: T.let[T.int32x8] = T.Broadcast(hv - 1, 8)
            for fi in range(TK4):
                b0: T.let[T.int64] = r * K + kt * TKS + fi * 4
                # entries 0..7 as one int32 vector (exact), entry 15 - e = -entry e
                t: T.let[T.int32x8] = ((isign(0) * T.Broadcast(T.Cast("int32", Af[b0]), 8)
                                        + isign(1) * T.Broadcast(T.Cast("int32", Af[b0 + 1]),
                                                                 8))
                                       + isign(2) * T.Broadcast(T.Cast("int32", Af[b0 + 2]),
                                                                8)) \
                    - T.Broadcast(T.Cast("int32", Af[b0 + 3]), 8)
                p0: T.let[T.int64] = pos(r, kt * TK4 + fi, 0, 0)
                if NB == 2:                  # low byte plane, then high (32 bytes on)
                    Qf[T.Ramp(p0, 1, 8)] = T.Cast("int8x8", low_byte(t))
                    Qf[T.Ramp(p0 + 8, 1, 8)] = mirrored(low_byte(-t))
                    Qf[T.Ramp(p0 + 32, 1, 8)] = T.Cast("int8x8", high_byte(t))
                    Qf[T.Ramp(p0 + 40, 1, 8)] = mirrored(high_byte(-t))
                else:
                    Qf[T.Ramp(p0, 1, 8)] = T.Cast("int8x8", shifted(t, sv, hvv))
                    Qf[T.Ramp(p0 + 8, 1, 8)] = mirrored(shifted(-t, sv, hvv))
            if PAD:
                for nb in range(NB):
                    for e in range(16):
                        Qf[(((r * KT + kt) * TK2 + TK2 - 1) * NB + nb) * 32 + 16 + e] = \
                            T.int8(0)
    return row


def _int_tables_func(T: Any, geo: TableGeometry, row: Any) -> Any:
    """The int8 tables PrimFunc around ``row``."""
    K, NG, KT, TK2, NB, PAR = geo.K, geo.NG, geo.KT, geo.TK2, geo.NB, geo.PAR

    @T.prim_func
    def kernel(a_h: T.handle, a2_h: T.handle, q_h: T.handle, sh_h: T.handle,
               rs_h: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        R = T.int64()
        A = T.match_buffer(a_h, (R, K), "int8")
        A2 = T.match_buffer(a2_h, (R, K), "int8")
        Q = T.match_buffer(q_h, (R, KT, TK2, NB, 32), "int8")
        SH = T.match_buffer(sh_h, (R, KT), "int32")
        RS = T.match_buffer(rs_h, (R, NG), "int32")
        Af = T.decl_buffer((R * K,), "int8", data=A.data)
        A2f = T.decl_buffer((R * K,), "int8", data=A2.data)
        Qf = T.decl_buffer((R * KT * TK2 * NB * 32,), "int8", data=Q.data)
        SHf = T.decl_buffer((R * KT,), "int32", data=SH.data)
        RSf = T.decl_buffer((R * NG,), "int32", data=RS.data)
        if PAR and R > 1:               # one row (LLM decode): no pool launch
            for r in T.parallel(R):
                row(r, Af, A2f, Qf, SHf, RSf)
        else:
            for r in range(R):
                row(r, Af, A2f, Qf, SHf, RSf)
    return kernel
