"""x86 AVX2 kernel for ``edgert.LutMatMul`` (T-MAC table lookup), wired into the CPU lowering.

``lower_int`` emits every LutMatMul as a ``call_tir`` of the generic TE compute
(:func:`edgert.ops.lutmatmul.te_compute`), marking the PrimFunc ``edgert.op = "lutmatmul"``
with its layout (``edgert.lut_layout``, JSON), ``edgert.lut_table_bits`` and which optional
inputs it has. On x86 targets with AVX2, :func:`schedule_lut_matmuls` replaces each such call
whose packed weight (and scales / zero points) are constants by two hand-written TIR kernels:

1. **Tables** (``lut_tables_x86_*``, parallel over activation rows when there are two or
   more): per row and 4-group the 8 entries ``((t0 + t1) + t2) + t3`` (``t_j = +-x_j``),
   mirrored ``T[15 - e] = -T[e]``, in the reference's order of operations (the 8 entries as
   one float32 / int32 vector, the signs as exact multiplications by +-1: K = 4096, one row,
   float 7.1 -> 4.0 us, int16 tables 15.9 -> 3.3 us, int8 tables 6.5 -> 4.3 us). Float32
   activations: per weight group the table scale
   ``ts = max(((|x0| + |x1|) + |x2|) + |x3|) / 127`` and ``q = clip(nearbyint(T / ts))`` as
   int8 (:func:`edgert.ops.lutmatmul.quantize_float_tables`), plus ``r = sum T[15]`` (float32,
   sequential). int8 activations: exact int16 tables stored as two byte planes (low byte read
   unsigned, high byte signed; ``table_bits = 16``) or int8 tables with a power-of-two shift
   per K tile (``table_bits = 8``), plus the integer row sum per group.
   Table bytes ``[R, K/tile_k, TK2, NB, 32]``: the 32 bytes hold the tables of 4-groups
   ``2*fi2`` (128-bit lane 0) and ``2*fi2 + 1`` (lane 1) of a K tile (``TK2 = ceil(tile_k/8)``;
   an odd last 4-group is padded with a zero table), so one 32-byte load feeds ``vpshufb``
   with two different tables, one per lane.
2. **Lookups** (``lut_matmul_x86_*``, parallel over tiles of 32 columns, every row inside a
   task so each weight byte is read from DRAM once). The constant packed weight is re-packed
   at compile time (:func:`repack_weight`) into ymm words ``[NT, K/tile_k, TK2, NV, 32]``: lane
   ``l`` = 4-group ``2*fi2 + l``; byte ``2j + e`` of a lane holds, for a *plane pair*
   ``(2p, 2p+1)``, the nibble of plane ``2p + e`` of column ``16v + j`` (low nibble) and of
   column ``16v + 8 + j`` (high nibble), ``v`` in {0, 1} (two words per pair); for the last
   plane of an odd bit count, the nibble of that plane of column ``8e + j`` (low) and
   ``16 + 8e + j`` (high) in one word. Per word: ``lo = w & 15``, ``hi = (w >> 4) & 15``, one
   ``vpshufb`` each (32 lookups), then ``vpmaddubsw`` against the multipliers ``(2**2p,
   2**(2p+1))`` per byte pair: the bit-plane merge and the widening to int16 in one
   instruction (the odd plane uses ``(2**i, 0)`` and ``(0, 2**i)``). Four int16 accumulators
   (8 columns x 2 lanes each) per byte plane; per lane at most ``tile_k / 8`` lookups of each
   plane per K tile, ``|sum| <= 8 * 255 * 15 < 2**15`` (unsigned low bytes included); the
   two lanes are then sign-extended (``vpmovsxwd``), added, shifted (8 for the high byte
   plane, the table shift for int8 tables of the integer variant) and added into int32: at
   each K tile end for int8 activations, every :func:`lookup_span` K tiles (the whole group
   at group 128) for float32 activations, whose int8 tables keep longer int16 sums in range.
   Float32 variant: at each weight-group end ``y += s[g, n] * ((ts * float(acc) + zc * r) *
   0.5)`` in float32, the reference's expression and order (scales re-packed to ``[NT, NG,
   32]``). Integer variant: ``acc + sum_g zc[g, n] * rowsum[g]`` as int32. Stores of the last,
   ragged column tile are masked (``vmaskmov``).
   Weight words are prefetched :data:`PREFETCH` bytes ahead (``prefetcht2``).
   **VNNI variant** (targets with AVX-512 VNNI, 4-bit weights): the words are re-packed so
   that a dword holds one column's four planes (:func:`repack_weight_vnni`); a 4-group's table
   is broadcast to both lanes and each ``vpshufb`` result goes through one ``vpdpbusd``
   against the multipliers ``(1, 2, 4, 8)``: plane merge, widening and accumulation into
   int32 at once (the unsigned low byte plane of int16 tables as its unsigned operand). Eight
   int32 accumulators, no int16 stage, the same results.

Results: bit-exact with :func:`edgert.ops.lutmatmul.reference` for int8 and for float32
activations: the float epilogue keeps the reference's operations and order, and every product
goes through ``llvm.arithmetic.fence`` so that LLVM (which TVM lets contract) emits no FMA.

Only AVX2 instructions are used (``vpshufb``, ``vpmaddubsw``, ``vpmovsxwd``, ``vmaskmov``),
plus ``vpdpbusd`` on VNNI targets. Not rewritten (generic compute kept): a weight, scale
or zero point that is not a constant, a layout with ``tile_n != 32``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from edgert.ops.lutmatmul import G, LutLayout, plane_nibbles, zero_constant

OP_ATTR = "edgert.op"
OP_NAME = "lutmatmul"
LAYOUT_ATTR = "edgert.lut_layout"
TABLE_BITS_ATTR = "edgert.lut_table_bits"
INPUTS_ATTR = "edgert.lut_inputs"
"""Which optional inputs the call has: ``"a,w"`` plus ``",scales"`` and/or ``",zero_points"``."""
KERNEL_ATTR = "edgert.lut_kernel"
"""``"lut"`` (table lookup) or ``"dequant"`` (the node's ``dequant = 1``)."""
TN = 32                 # columns per tile (one tile: 4 int32 ymm accumulators)
PREFETCH = 16384
"""Bytes ahead of the K tile in hand at which the lookup kernel prefetches weight words (every
bit width). Each K tile's words are consumed in a few hundred cycles, faster than the hardware
prefetcher runs ahead of the stream. 4096x4096 from DRAM (64 MB of rotated copies in huge
pages), the kernel alone, Zen 4, one interleaved process per width; before (2048 bytes ahead
into L1 below 4 bits, none at 4) -> after, us:

=======  ==========  ==========
bits     1 thread    2 threads
=======  ==========  ==========
1        150 -> 128  115 -> 94
2        286 -> 240  255 -> 204
3        378 -> 288  236 -> 179
4        400 -> 359  222 -> 182
ternary  258 -> 196  186 -> 160
=======  ==========  ==========

Weights read from the cache run as before."""
PREFETCH_LOCALITY = 1
"""``llvm.prefetch`` locality of those prefetches: 1 = ``prefetcht2`` (toward L2, not L1: 16
KiB ahead would evict the tables from L1, whose miss buffers are fewer). 4-bit, one thread,
16 KiB ahead, one process: ``prefetcht2`` 444 us, ``prefetcht1`` 443, ``prefetcht0`` 770,
``prefetchnta`` 781."""
PSHUF = "llvm.x86.avx2.pshuf.b"
DPBUSD = "llvm.x86.avx512.vpdpbusd.256"
MADDUBS = "llvm.x86.avx2.pmadd.ub.sw"


def primfunc_attrs(layout: LutLayout, table_bits: int, has_scales: bool,
                   has_zero_points: bool, dequant: bool = False) -> dict[str, Any]:
    """The attributes ``lower_int`` puts on a generic LutMatMul PrimFunc."""
    inputs = "a,w" + (",scales" if has_scales else "") + (",zero_points" if has_zero_points
                                                           else "")
    return {OP_ATTR: OP_NAME, LAYOUT_ATTR: layout.to_json(), TABLE_BITS_ATTR: int(table_bits),
            INPUTS_ATTR: inputs, KERNEL_ATTR: "dequant" if dequant else "lut"}


def _geometry(layout: LutLayout) -> tuple[int, int, int, int, int, int]:
    """``(KT, TK4, TK2, NP, ODD, NV)``: K tiles, 4-groups per tile, 4-group pairs per tile,
    plane pairs, an odd last plane (0/1), ymm words per 4-group pair."""
    kt, tk4 = layout.K // layout.tile_k, layout.tile_k // G
    tk2 = (tk4 + 1) // 2
    np_, odd = layout.bits // 2, layout.bits % 2
    return kt, tk4, tk2, np_, odd, 2 * np_ + odd


# ---------------------------------------------------------------- packing (numpy)

def _paired_nibbles(planes: np.ndarray, layout: LutLayout) -> np.ndarray:
    """Every (plane, 4-group, column) nibble as uint8 ``[NT, KT, TK2, 2, B, 32]``: tile, K tile,
    4-group pair, 4-group of the pair, plane, column of the tile (zero for the padded 4-group
    of an odd count and the padded columns)."""
    if layout.tile_n != TN:
        raise ValueError(f"the x86 LutMatMul kernel needs tile_n = {TN}, got {layout.tile_n}")
    kt, tk4, tk2, _, _, _ = _geometry(layout)
    nt, b = layout.n_tiles, layout.bits
    nib = np.zeros((b, layout.K // G, nt * TN), np.uint8)
    nib[:, :, :layout.N] = plane_nibbles(planes, layout)
    pad = np.zeros((b, kt, 2 * tk2, nt, TN), np.uint8)
    pad[:, :, :tk4] = nib.reshape(b, kt, tk4, nt, TN)
    return pad.reshape(b, kt, tk2, 2, nt, TN).transpose(4, 1, 2, 3, 0, 5)


def repack_weight(planes: np.ndarray, layout: LutLayout) -> np.ndarray:
    """The layout-v1 packed weight re-packed for the kernel: uint8 ``[NT, KT, TK2, NV, 32]``
    (module docstring)."""
    nib = _paired_nibbles(planes, layout)                           # [nt,kt,tk2,l,b,col]
    kt, _, tk2, np_, odd, nv = _geometry(layout)
    nt, b = layout.n_tiles, layout.bits
    out = np.zeros((nt, kt, tk2, nv, 2, 16), np.uint8)
    j = np.arange(8)
    for p in range(np_):
        for v in range(2):
            for e in range(2):
                lo = nib[..., 2 * p + e, 16 * v + j]
                hi = nib[..., 2 * p + e, 16 * v + 8 + j]
                out[:, :, :, 2 * p + v][..., 2 * j + e] = lo | (hi << 4)
    if odd:
        for e in range(2):
            lo = nib[..., b - 1, 8 * e + j]
            hi = nib[..., b - 1, 16 + 8 * e + j]
            out[:, :, :, nv - 1][..., 2 * j + e] = lo | (hi << 4)
    return np.ascontiguousarray(out.reshape(nt, kt, tk2, nv, 32))


def repack_weight_vnni(planes: np.ndarray, layout: LutLayout) -> np.ndarray:
    """A 4-bit layout-v1 packed weight re-packed for the VNNI kernel: uint8 ``[NT, KT, TK2, 4,
    32]``; word ``2g + j`` of 4-group pair ``fi2`` holds 4-group ``2 fi2 + g``: in lane ``L``,
    byte ``4d + e`` has plane ``e``'s nibble of column ``16j + 4L + d`` (low nibble) and of
    column ``16j + 8 + 4L + d`` (high nibble), so that a dword is one column's four planes."""
    if layout.bits != 4:
        raise ValueError("the VNNI LutMatMul kernel needs 4-bit weights")
    nib = _paired_nibbles(planes, layout).swapaxes(-1, -2)         # [nt,kt,tk2,g,col,e]
    kt, _, tk2, _, _, _ = _geometry(layout)
    nt = layout.n_tiles
    col = (16 * np.arange(2)[:, None, None] + 4 * np.arange(2)[None, :, None]
           + np.arange(4)[None, None, :])                                  # [j, L, d]
    out = nib[..., col, :] | (nib[..., col + 8, :] << 4)                   # [..,g,j,L,d,e]
    return np.ascontiguousarray(out.reshape(nt, kt, tk2, 4, 32))


def uses_vnni(layout: LutLayout, vnni: bool) -> bool:
    """Whether the VNNI lookup kernel serves ``layout`` on a target with AVX-512 VNNI (4-bit
    weights: a dword holds one column's four planes; fewer bits would waste lookups)."""
    return vnni and layout.bits == 4 and layout.tile_n == TN


def lookup_span(layout: LutLayout, float_acts: bool, vnni: bool) -> int:
    """K tiles whose lookups the x86 kernel sums before widening them into int32: 1 for int8
    activations (int16 tables, per-tile shifts); for float32 activations (int8 tables, |q| <=
    127) the most K tiles of a weight group that keep every int16 sum in range: a lookup
    merged over plane pair ``p`` adds at most ``127 * 3 * 4**p`` (the odd plane ``127 *
    2**(b-1)``), ``ceil(tile_k / 8)`` of them per K tile and lane. The VNNI kernel adds into
    int32 and spans the whole group. At group 128 every width spans both K tiles: half the
    widening."""
    gk = layout.group_size // layout.tile_k
    if not float_acts:
        return 1
    if vnni:
        return gk
    _, _, tk2, np_, odd, _ = _geometry(layout)
    most = 127 * max(3 * 4 ** (np_ - 1) if np_ else 0, 2 ** (layout.bits - 1) if odd else 0)
    return max(s for s in range(1, gk + 1) if gk % s == 0 and s * tk2 * most < 2**15)


def repack_columns(values: np.ndarray, layout: LutLayout, dtype: str) -> np.ndarray:
    """Per (group, column) values [NG, N] -> ``[NT, NG, 32]`` of ``dtype`` (zero padded)."""
    nt, ng = layout.n_tiles, layout.n_groups
    out = np.zeros((ng, nt * TN), dtype)
    out[:, :layout.N] = values
    return np.ascontiguousarray(out.reshape(ng, nt, TN).transpose(1, 0, 2))


# ---------------------------------------------------------------- the table kernel

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

    K, NG, GS = layout.K, layout.n_groups, layout.group_size
    KT, TK4, TK2, _, _, _ = _geometry(layout)
    TKS = layout.tile_k
    NB = 2 if (not float_acts and table_bits == 16) else 1
    PAD = TK4 % 2 == 1
    PAR = cores > 1

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

    if float_acts:
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
    else:
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

    return kernel.with_attr("global_symbol", name)


# ---------------------------------------------------------------- the lookup kernel

@lru_cache(maxsize=None)
def lookup_prim_func(*, float_acts: bool, has_zp: bool, lanes: int, w_shape: tuple[int, ...],
                     k_tile: Any, store: Any, fence: Any, KT: int, TK2: int, NB: int, NT: int,
                     NG: int, GK: int, N: int, ZC0: int, PAR: bool, span: int = 1) -> Any:
    """The lookup PrimFunc around an ISA's macros, shared by the x86 and the aarch64 kernels:
    per column tile ``nt`` (parallel when ``PAR``) and row ``r``, ``k_tile(..., kt, ...)`` adds
    the lookups of K tiles ``kt .. kt + span - 1`` (float activations; one K tile for int8)
    into ``TN`` int32 accumulators; the group epilogue (float: the reference's fenced
    ``s * (ts * acc + zc * rs) / 2`` per weight group; int: ``acc + zc * rs``) runs on vectors
    of ``lanes``; ``store`` writes a row of the tile. Signatures: see :func:`lookup_kernel`."""
    from tvm.script import tirx as T

    L, V = lanes, TN // lanes
    FVEC = f"float32x{lanes}"
    W_SHAPE = w_shape
    W_SIZE = int(np.prod(w_shape))

    if float_acts:
        @T.macro
        def task(nt, R, Qf, TSf, RSf, Wf, Sf, ZCf, Of):
            for r in range(R):
                acc32 = T.alloc_buffer((TN,), "int32")
                y = T.alloc_buffer((TN,), "float32")
                for a in T.unroll(V):
                    y[T.Ramp(a * L, 1, L)] = T.Broadcast(T.float32(0), L)
                for g in range(NG):
                    for a in T.unroll(V):
                        acc32[T.Ramp(a * L, 1, L)] = T.Broadcast(T.int32(0), L)
                    for kg in range(GK // span):
                        k_tile(nt, r, g * GK + kg * span, Qf, TSf, Wf, acc32)
                    ts: T.let = T.Broadcast(TSf[r * NG + g], L)
                    rs: T.let = T.Broadcast(RSf[r * NG + g], L)
                    for a in T.unroll(V):
                        c0: T.let[T.int32] = (nt * NG + g) * TN + a * L
                        if has_zp:
                            zc: T.let = ZCf[T.Ramp(c0, 1, L)]
                        else:
                            zc: T.let = T.Broadcast(T.float32(ZC0), L)
                        # llvm.arithmetic.fence on every product: no FMA contraction, so the
                        # float ops are the reference's, rounding for rounding
                        inner: T.let = fence(ts * T.Cast(FVEC, acc32[T.Ramp(a * L, 1, L)])) \
                            + fence(zc * rs)
                        y[T.Ramp(a * L, 1, L)] = y[T.Ramp(a * L, 1, L)] + fence(
                            Sf[T.Ramp(c0, 1, L)] * (inner * T.Broadcast(T.float32(0.5), L)))
                store(Of, y, r, nt)

        @T.prim_func
        def kernel(q_h: T.handle, ts_h: T.handle, rs_h: T.handle, w_h: T.handle,
                   s_h: T.handle, zc_h: T.handle, out_h: T.handle):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            R = T.int64()
            Q = T.match_buffer(q_h, (R, KT, TK2, NB, 32), "int8")
            TS = T.match_buffer(ts_h, (R, NG), "float32")
            RS = T.match_buffer(rs_h, (R, NG), "float32")
            W = T.match_buffer(w_h, W_SHAPE, "uint8")
            S = T.match_buffer(s_h, (NT, NG, TN), "float32")
            ZC = T.match_buffer(zc_h, (NT, NG, TN), "float32")
            OUT = T.match_buffer(out_h, (R, N), "float32")
            Qf = T.decl_buffer((R * KT * TK2 * NB * 32,), "int8", data=Q.data)
            TSf = T.decl_buffer((R * NG,), "float32", data=TS.data)
            RSf = T.decl_buffer((R * NG,), "float32", data=RS.data)
            Wf = T.decl_buffer((W_SIZE,), "uint8", data=W.data)
            Sf = T.decl_buffer((NT * NG * TN,), "float32", data=S.data)
            ZCf = T.decl_buffer((NT * NG * TN,), "float32", data=ZC.data)
            Of = T.decl_buffer((R * N,), "float32", data=OUT.data)
            if PAR:
                for nt in T.parallel(NT):
                    task(nt, R, Qf, TSf, RSf, Wf, Sf, ZCf, Of)
            else:
                for nt in range(NT):
                    task(nt, R, Qf, TSf, RSf, Wf, Sf, ZCf, Of)
    else:
        @T.macro
        def task(nt, R, Qf, SHf, RSf, Wf, ZCf, Of):
            for r in range(R):
                acc32 = T.alloc_buffer((TN,), "int32")
                for a in T.unroll(V):
                    acc32[T.Ramp(a * L, 1, L)] = T.Broadcast(T.int32(0), L)
                for kt in range(KT):
                    k_tile(nt, r, kt, Qf, SHf, Wf, acc32)
                for g in range(NG):
                    rs: T.let = T.Broadcast(RSf[r * NG + g], L)
                    for a in T.unroll(V):
                        if has_zp:
                            zc: T.let = ZCf[T.Ramp((nt * NG + g) * TN + a * L, 1, L)]
                        else:
                            zc: T.let = T.Broadcast(T.int32(ZC0), L)
                        acc32[T.Ramp(a * L, 1, L)] = acc32[T.Ramp(a * L, 1, L)] + zc * rs
                store(Of, acc32, r, nt)

        @T.prim_func
        def kernel(q_h: T.handle, sh_h: T.handle, rs_h: T.handle, w_h: T.handle,
                   zc_h: T.handle, out_h: T.handle):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            R = T.int64()
            Q = T.match_buffer(q_h, (R, KT, TK2, NB, 32), "int8")
            SH = T.match_buffer(sh_h, (R, KT), "int32")
            RS = T.match_buffer(rs_h, (R, NG), "int32")
            W = T.match_buffer(w_h, W_SHAPE, "uint8")
            ZC = T.match_buffer(zc_h, (NT, NG, TN), "int32")
            OUT = T.match_buffer(out_h, (R, N), "int32")
            Qf = T.decl_buffer((R * KT * TK2 * NB * 32,), "int8", data=Q.data)
            SHf = T.decl_buffer((R * KT,), "int32", data=SH.data)
            RSf = T.decl_buffer((R * NG,), "int32", data=RS.data)
            Wf = T.decl_buffer((W_SIZE,), "uint8", data=W.data)
            ZCf = T.decl_buffer((NT * NG * TN,), "int32", data=ZC.data)
            Of = T.decl_buffer((R * N,), "int32", data=OUT.data)
            if PAR:
                for nt in T.parallel(NT):
                    task(nt, R, Qf, SHf, RSf, Wf, ZCf, Of)
            else:
                for nt in range(NT):
                    task(nt, R, Qf, SHf, RSf, Wf, ZCf, Of)

    return kernel


def lookup_kernel(layout: LutLayout, float_acts: bool, table_bits: int, has_zp: bool,
                  cores: int, name: str = "lut_matmul_x86", prefetch: int | None = None,
                  vnni: bool = False) -> Any:
    """Lookup PrimFunc. Float: ``(QT, TS, RS, W2, S [NT, NG, 32] f32, [ZC [NT, NG, 32] f32],
    OUT f32 [R, N])``; int8: ``(QT, SH, RSUM, W2, [ZC [NT, NG, 32] i32], OUT i32 [R, N])``
    (``ZC`` is read only with zero points; otherwise the symmetric constant). ``prefetch``:
    bytes ahead to prefetch weight words (None: :data:`PREFETCH`; 0: none).

    ``vnni`` (AVX-512 VNNI targets; 4-bit weights, see :func:`uses_vnni`): the weight comes
    from :func:`repack_weight_vnni` and each lookup is merged over its four planes and added
    into int32 by one ``vpdpbusd`` against the multipliers ``(1, 2, 4, 8)`` (the table
    broadcast to both lanes), instead of ``vpmaddubsw`` + ``vpaddw`` and the widening."""
    from tvm.script import tirx as T

    KT, TK4, TK2, NP, ODD, NV = _geometry(layout)
    N, NT, NG, B = layout.N, layout.n_tiles, layout.n_groups, layout.bits
    GK = layout.group_size // layout.tile_k          # K tiles per weight group
    NB = 2 if (not float_acts and table_bits == 16) else 1
    SHIFTED = not float_acts and table_bits == 8
    ZC0 = int(zero_constant(layout, None)[0, 0])
    PAR = cores > 1
    use_vnni = uses_vnni(layout, vnni)
    SPAN = lookup_span(layout, float_acts, use_vnni)
    OI = B - 1                                       # the odd plane
    M_ODD0, M_ODD1 = 1 << OI, (1 << OI) << 8         # int16 multiplier words of the odd plane
    LINES = (TK2 * NV * 32 + 63) // 64                # cache lines of one K tile's weight words
    if prefetch is None:
        prefetch = PREFETCH
    LOC = PREFETCH_LOCALITY

    def nibbles(w, h):
        # the 4-bit fields at bit 4h of a word's bytes, as vpshufb indices
        return T.reinterpret("int8x32", T.bitwise_and(
            T.shift_right(w, T.Broadcast(T.uint8(4 * h), 32)), T.Broadcast(T.uint8(15), 32)))

    @T.macro
    def prefetch_words(Wf, nt, kt):
        # the weight words `prefetch` bytes ahead of K tile kt (both layouts: NV words a pair)
        if prefetch > 0:
            for i in T.unroll(LINES):
                T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0", T.address_of(
                    Wf[((nt * KT + kt) * TK2) * NV * 32 + prefetch + i * 64]), 0, LOC, 1))

    def make_lookups(unsigned: bool):
        @T.macro
        def lookups(acc16, base, tab, Wf, w0):
            # one 4-group pair, every word (all planes) of one tile; lookups into acc16[base..]
            for p in T.unroll(NP):
                mult: T.let[T.int8x32] = T.reinterpret("int8x32", T.Broadcast(
                    T.shift_left(T.int16(513), T.Cast("int16", 2 * p)), 16))
                for v in T.unroll(2):
                    w: T.let[T.uint8x32] = Wf[T.Ramp(w0 + (2 * p + v) * 32, 1, 32)]
                    for h in T.unroll(2):
                        idx: T.let[T.int8x32] = nibbles(w, h)
                        look: T.let[T.int8x32] = T.call_llvm_pure_intrin("int8x32", PSHUF, tab, idx)
                        a0: T.let[T.int32] = base + (2 * v + h) * 16
                        if unsigned:
                            acc16[T.Ramp(a0, 1, 16)] = acc16[T.Ramp(a0, 1, 16)] + \
                                T.call_llvm_pure_intrin("int16x16", MADDUBS, look, mult)
                        else:
                            acc16[T.Ramp(a0, 1, 16)] = acc16[T.Ramp(a0, 1, 16)] + \
                                T.call_llvm_pure_intrin("int16x16", MADDUBS, mult, look)
            if ODD == 1:
                w: T.let[T.uint8x32] = Wf[T.Ramp(w0 + (NV - 1) * 32, 1, 32)]
                for h in T.unroll(2):
                    idx: T.let[T.int8x32] = nibbles(w, h)
                    look: T.let[T.int8x32] = T.call_llvm_pure_intrin("int8x32", PSHUF, tab, idx)
                    for e in T.unroll(2):
                        mult: T.let[T.int8x32] = T.reinterpret("int8x32", T.Broadcast(
                            T.Select(e == 0, T.int16(M_ODD0), T.int16(M_ODD1)), 16))
                        a0: T.let[T.int32] = base + (2 * h + e) * 16
                        if unsigned:
                            acc16[T.Ramp(a0, 1, 16)] = acc16[T.Ramp(a0, 1, 16)] + \
                                T.call_llvm_pure_intrin("int16x16", MADDUBS, look, mult)
                        else:
                            acc16[T.Ramp(a0, 1, 16)] = acc16[T.Ramp(a0, 1, 16)] + \
                                T.call_llvm_pure_intrin("int16x16", MADDUBS, mult, look)
        return lookups

    def fence(x):
        return T.call_llvm_pure_intrin("float32x8", "llvm.arithmetic.fence", x)

    look_signed = make_lookups(False)
    look_unsigned = make_lookups(True)

    @T.macro
    def k_tile(nt, r, kt0, Qf, SHf, Wf, acc32):
        acc16 = T.alloc_buffer((NB * 64,), "int16")
        for i in T.unroll(NB * 4):
            acc16[T.Ramp(i * 16, 1, 16)] = T.Broadcast(T.int16(0), 16)
        for kk in range(SPAN):
            kt: T.let[T.int32] = kt0 + kk
            prefetch_words(Wf, nt, kt)
            for fi2 in range(TK2):
                q0: T.let[T.int64] = ((r * KT + kt) * TK2 + fi2) * NB * 32
                w0: T.let[T.int32] = ((nt * KT + kt) * TK2 + fi2) * NV * 32
                if NB == 2:
                    look_unsigned(acc16, 0, Qf[T.Ramp(q0, 1, 32)], Wf, w0)
                    look_signed(acc16, 64, Qf[T.Ramp(q0 + 32, 1, 32)], Wf, w0)
                else:
                    look_signed(acc16, 0, Qf[T.Ramp(q0, 1, 32)], Wf, w0)
        for nb in T.unroll(NB):
            for a in T.unroll(4):
                both: T.let[T.int32x8] = \
                    T.Cast("int32x8", acc16[T.Ramp((nb * 4 + a) * 16, 1, 8)]) \
                    + T.Cast("int32x8", acc16[T.Ramp((nb * 4 + a) * 16 + 8, 1, 8)])
                if SHIFTED:                          # (SPAN = 1)
                    acc32[T.Ramp(a * 8, 1, 8)] = acc32[T.Ramp(a * 8, 1, 8)] + T.shift_left(
                        both, T.Broadcast(SHf[r * KT + kt0], 8))
                else:
                    acc32[T.Ramp(a * 8, 1, 8)] = acc32[T.Ramp(a * 8, 1, 8)] + T.shift_left(
                        both, T.Broadcast(T.int32(8) * nb, 8))

    MULT = 0x08040201                                # vpdpbusd multipliers: plane e -> 2**e

    @T.macro
    def k_tile_vnni(nt, r, kt0, Qf, SHf, Wf, acc32):
        # accumulators [s][j][h] (s: the 4-group of the pair, or the table byte plane)
        acc = T.alloc_buffer((64,), "int32")
        for i in T.unroll(8):
            acc[T.Ramp(i * 8, 1, 8)] = T.Broadcast(T.int32(0), 8)
        mult: T.let[T.int8x32] = T.reinterpret("int8x32", T.Broadcast(T.int32(MULT), 8))
        for kk in range(SPAN):
            kt: T.let[T.int32] = kt0 + kk
            prefetch_words(Wf, nt, kt)
            for fi2 in range(TK2):
                q0: T.let[T.int64] = ((r * KT + kt) * TK2 + fi2) * NB * 32
                w0: T.let[T.int32] = ((nt * KT + kt) * TK2 + fi2) * NV * 32
                for g in T.unroll(2):
                    for j in T.unroll(2):
                        w: T.let[T.uint8x32] = Wf[T.Ramp(w0 + (2 * g + j) * 32, 1, 32)]
                        for h in T.unroll(2):
                            idx: T.let[T.int8x32] = nibbles(w, h)
                            for nb in T.unroll(NB):
                                t16: T.let[T.int8x16] = Qf[T.Ramp(q0 + nb * 32 + g * 16, 1, 16)]
                                tab: T.let[T.int8x32] = T.Shuffle([t16, t16], list(range(16)) * 2)
                                look: T.let[T.int8x32] = T.call_llvm_pure_intrin(
                                    "int8x32", PSHUF, tab, idx)
                                s_: T.let[T.int32] = g * (2 - NB) + nb * (NB - 1)   # g, or nb
                                a0: T.let[T.int32] = ((s_ * 2 + j) * 2 + h) * 8
                                if NB == 2 and nb == 0:      # the unsigned low byte plane
                                    acc[T.Ramp(a0, 1, 8)] = T.call_llvm_pure_intrin(
                                        "int32x8", DPBUSD, acc[T.Ramp(a0, 1, 8)],
                                        T.reinterpret("uint8x32", look), mult)
                                else:
                                    acc[T.Ramp(a0, 1, 8)] = T.call_llvm_pure_intrin(
                                        "int32x8", DPBUSD, acc[T.Ramp(a0, 1, 8)],
                                        T.reinterpret("uint8x32", mult), look)
        for a in T.unroll(4):
            if NB == 2:
                both: T.let[T.int32x8] = acc[T.Ramp(a * 8, 1, 8)] + T.shift_left(
                    acc[T.Ramp(32 + a * 8, 1, 8)], T.Broadcast(T.int32(8), 8))
            else:
                both: T.let[T.int32x8] = acc[T.Ramp(a * 8, 1, 8)] + acc[T.Ramp(32 + a * 8, 1, 8)]
            if SHIFTED:                              # (SPAN = 1)
                acc32[T.Ramp(a * 8, 1, 8)] = acc32[T.Ramp(a * 8, 1, 8)] + T.shift_left(
                    both, T.Broadcast(SHf[r * KT + kt0], 8))
            else:
                acc32[T.Ramp(a * 8, 1, 8)] = acc32[T.Ramp(a * 8, 1, 8)] + both

    @T.macro
    def store(Of, y, r, nt):
        cols: T.let[T.int32] = N - nt * TN
        if cols >= TN:
            for a in T.unroll(4):
                Of[T.Ramp(r * N + nt * TN + a * 8, 1, 8)] = y[T.Ramp(a * 8, 1, 8)]
        else:
            for a in T.unroll(4):
                T.evaluate(T.masked_store(
                    Of, y[T.Ramp(a * 8, 1, 8)], T.Ramp(r * N + nt * TN + a * 8, 1, 8),
                    T.Ramp(0, 1, 8) < T.Broadcast(T.Cast("int32", cols) - a * 8, 8)))

    return lookup_prim_func(
        float_acts=float_acts, has_zp=has_zp, lanes=8,
        w_shape=(NT, KT, TK2, 4 if use_vnni else NV, 32),
        k_tile=k_tile_vnni if use_vnni else k_tile, store=store, fence=fence, KT=KT, TK2=TK2,
        NB=NB, NT=NT, NG=NG, GK=GK,
        N=N, ZC0=ZC0, PAR=PAR, span=SPAN).with_attr("global_symbol", name)


# ---------------------------------------------------------------- direct use (tests, benchmark)

class LutOperands:
    """Compile-time operands of one LutMatMul for the kernels (numpy)."""

    def __init__(self, layout: LutLayout, planes: np.ndarray, scales: np.ndarray | None,
                 zero_points: np.ndarray | None, float_acts: bool, vnni: bool = False) -> None:
        self.layout = layout
        self.w2 = (repack_weight_vnni if uses_vnni(layout, vnni) else repack_weight)(
            planes, layout)
        self.has_zp = zero_points is not None
        zc = zero_constant(layout, zero_points)
        if float_acts:
            self.scales = repack_columns(scales, layout, "float32")
            self.zc = repack_columns(zc.astype(np.float32), layout, "float32")
        else:
            self.scales = None
            self.zc = repack_columns(zc, layout, "int32")


def intermediate_shapes(layout: LutLayout, rows: Any, float_acts: bool, table_bits: int
                        ) -> list[tuple[tuple, str]]:
    """Shapes and dtypes of the table kernel's outputs for ``rows`` activation rows, in its
    order (float: TS, RS, QT; int8: QT, SH, RSUM)."""
    kt, _, tk2, _, _, _ = _geometry(layout)
    nb = 2 if (not float_acts and table_bits == 16) else 1
    if float_acts:
        return [((rows, layout.n_groups), "float32"), ((rows, layout.n_groups), "float32"),
                ((rows, kt, tk2, nb, 32), "int8")]
    return [((rows, kt, tk2, nb, 32), "int8"), ((rows, kt), "int32"),
            ((rows, layout.n_groups), "int32")]


# ---------------------------------------------------------------- the Relax rewrite

def _const_value(expr: Any) -> np.ndarray | None:
    import tvm

    if isinstance(expr, tvm.ir.GenericConst):
        return expr.value.numpy()
    return None


@dataclass(frozen=True)
class LutKernels:
    """One ISA's LutMatMul kernels for :func:`rewrite_lut_matmuls`.

    Attributes:
        isa: kernel name tag (``x86``, ``arm``).
        table_kernel, lookup_kernel: the PrimFunc factories (signatures as in this module).
        operands: the class re-packing the constants (``w2``, ``scales``, ``zc``, ``has_zp``).
        accepts: whether a layout suits the kernels.
        dequant: the ``dequant = 1`` kernel for float32 activations, or None (such calls keep
            the generic compute): a module with ``dequant_kernel(layout, cores, name=...)``,
            ``accepts(layout)`` and ``operands(planes, scales, zero_points, layout)``, as
            :mod:`edgert.compiler.schedule_lut_dequant`.
        vnni: the target has AVX-512 VNNI (x86): calls that :func:`wants_vnni` get the
            ``vpdpbusd`` lookups (``lookup_kernel`` and ``operands`` take ``vnni=True``).
    """

    isa: str
    table_kernel: Callable[..., Any]
    lookup_kernel: Callable[..., Any]
    operands: type
    accepts: Callable[[LutLayout], bool]
    dequant: Any = None
    vnni: bool = False


VNNI_MIN_ROWS = 8
"""Activation rows from which a 4-bit LutMatMul gets the VNNI kernel. From DRAM at one row (LLM
decode) the ``vpmaddubsw`` kernel was the faster one, though the VNNI one is faster from
cache: 4096x4096, kernel alone, one / two threads, 301 vs 321 us / 237 vs 244 us; at 8 rows
VNNI won, 1702 vs 1817 us / 904 vs 942 us; at 4 rows a tie."""


def wants_vnni(layout: LutLayout, rows: Any) -> bool:
    """Whether a call with ``rows`` activation rows (a PrimExpr) takes the VNNI kernel on a
    VNNI target: 4-bit weights and a static row count of at least :data:`VNNI_MIN_ROWS`
    (symbolic rows are an LLM's tokens: one at a time while it generates)."""
    from tvm import tirx
    from tvm.sym.analyzer import Analyzer

    rows = Analyzer().simplify(rows)
    return (uses_vnni(layout, True) and isinstance(rows, tirx.IntImm)
            and int(rows.value) >= VNNI_MIN_ROWS)


def schedule_lut_matmuls(mod: Any, tvm_target: Any, vnni: bool = False) -> Any:
    """Replace the generic LutMatMul calls of a Relax module by the AVX2 kernels (the caller
    checks that the target has AVX2; ``vnni``: it has AVX-512 VNNI, and 4-bit weights with
    enough static rows get the ``vpdpbusd`` lookups, :func:`wants_vnni`); see
    :func:`rewrite_lut_matmuls`."""
    from edgert.compiler import schedule_lut_dequant as dq

    return rewrite_lut_matmuls(mod, tvm_target, LutKernels(
        "x86", table_kernel, lookup_kernel, LutOperands, lambda layout: layout.tile_n == TN, dq,
        vnni=vnni))


def rewrite_lut_matmuls(mod: Any, tvm_target: Any, kernels: LutKernels) -> Any:
    """Replace the generic LutMatMul calls of a Relax module by ``kernels``.

    Every ``call_tir`` of a PrimFunc marked ``edgert.op = "lutmatmul"`` whose weight (and
    scales / zero points) are constants and whose layout ``kernels.accepts`` becomes: A
    reshaped to ``[R, K]``, the table kernel (three outputs), the lookup kernel on the
    re-packed constants, a reshape back. A ``dequant = 1`` call with float32 activations
    becomes ``kernels.dequant``'s kernel on its re-packed codes, scales and zero terms instead
    (where there is one and it accepts the layout). Other calls are left alone.
    """
    from tvm import relax, tirx

    from edgert.compiler.schedule_intmatmul import num_cores, rewrite_call_tirs

    specs = {}
    for gv, f in mod.functions_items():
        if (isinstance(f, tirx.PrimFunc) and f.attrs is not None
                and str(f.attrs.get(OP_ATTR, "")) == OP_NAME and LAYOUT_ATTR in f.attrs):
            specs[gv.name_hint] = (LutLayout.from_json(str(f.attrs[LAYOUT_ATTR])),
                                   int(f.attrs[TABLE_BITS_ATTR]),
                                   str(f.attrs[INPUTS_ATTR]).split(","),
                                   str(f.attrs.get(KERNEL_ATTR, "lut")) == "dequant")
    if not specs:
        return mod
    cores = num_cores(tvm_target)

    def kernel(rw: Any, kind: str, layout: LutLayout, float_acts: bool, tb: int,
               has_zp: bool, **vnni: bool) -> Any:
        key = (kind, layout, float_acts, tb, has_zp, bool(vnni))
        if key not in rw.kernels:
            tag = (f"{'f32' if float_acts else 'i8'}_b{layout.bits}_k{layout.K}_n{layout.N}"
                   f"_g{layout.group_size}_t{tb}{'_zp' if has_zp else ''}"
                   f"{'_vnni' if vnni else ''}")
            name = f"lut_{kind}_{kernels.isa}_{tag}"
            if kind == "tables":
                func = kernels.table_kernel(layout, float_acts, tb, cores, name)
            elif kind == "dequant":
                func = kernels.dequant.dequant_kernel(layout, cores, name=name)
            else:
                func = kernels.lookup_kernel(layout, float_acts, tb, has_zp, cores, name, **vnni)
            rw.add_kernel(key, func, name)
        return rw.kernels[key]

    def rewrite(rw: Any, call: Any) -> Any | None:
        layout, tb, inputs, dequant = specs[call.args[0].name_hint]
        args = call.args[1]
        usable = (kernels.dequant is not None and kernels.dequant.accepts(layout)
                  if dequant else kernels.accepts(layout))
        if (not isinstance(args, relax.Tuple) or len(call.args) > 2
                or len(args.fields) != len(inputs) or not usable):
            return None
        named = dict(zip(inputs, args.fields))
        a = named["a"]
        w = _const_value(named["w"])
        scales = _const_value(named["scales"]) if "scales" in named else None
        zps = _const_value(named["zero_points"]) if "zero_points" in named else None
        if (w is None or ("scales" in named and scales is None)
                or ("zero_points" in named and zps is None)):
            return None
        a_ty, out_ty = a.ty, call.ty
        if not (isinstance(a_ty, relax.TensorType) and isinstance(a_ty.shape, relax.ShapeExpr)
                and isinstance(out_ty, relax.TensorType)):
            return None
        float_acts = str(a_ty.dtype) == "float32"
        if (not float_acts and str(a_ty.dtype) != "int8") or (dequant and not float_acts):
            return None
        bb = rw.builder_
        shape = list(a_ty.shape.values)
        rows = shape[0]
        for d in shape[1:-1]:
            rows = rows * d
        a2 = a if len(shape) == 2 else bb.emit(relax.op.memory.view(a, [rows, layout.K]))
        if dequant:
            consts = kernels.dequant.operands(w, scales, zps, layout)
            out = bb.emit(relax.call_tir(
                kernel(rw, "dequant", layout, True, tb, zps is not None),
                [a2, *(relax.const(c) for c in consts)],
                relax.TensorType([rows, layout.N], "float32")))
            return out if len(shape) == 2 else relax.op.memory.view(out, out_ty.shape)
        vnni = {"vnni": True} if kernels.vnni and wants_vnni(layout, rows) else {}
        ops = kernels.operands(layout, w, scales, zps, float_acts, **vnni)
        outs = intermediate_shapes(layout, rows, float_acts, tb)
        tabs = bb.emit(relax.call_tir(
            kernel(rw, "tables", layout, float_acts, tb, False), [a2, a2],   # see table_kernel
            [relax.TensorType(list(s), d) for s, d in outs]))
        parts = [bb.emit(relax.TupleGetItem(tabs, i))       # (QT, TS or SH, RS)
                 for i in ((2, 0, 1) if float_acts else (0, 1, 2))]
        consts = [relax.const(ops.w2)]
        if float_acts:
            consts.append(relax.const(ops.scales))
        consts.append(relax.const(ops.zc))
        out = bb.emit(relax.call_tir(
            kernel(rw, "matmul", layout, float_acts, tb, ops.has_zp, **vnni), [*parts, *consts],
            relax.TensorType([rows, layout.N], "float32" if float_acts else "int32")))
        return out if len(shape) == 2 else relax.op.memory.view(out, out_ty.shape)

    return rewrite_call_tirs(mod, specs, rewrite)
