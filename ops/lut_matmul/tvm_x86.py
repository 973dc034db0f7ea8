"""x86 AVX2 kernels for ``edgert.LutMatMul`` (T-MAC table lookup), wired into the CPU lowering.

The ONNX converter (:func:`edgert.ops.lut_matmul.tvm.emit`) emits every LutMatMul as a
``call_tir`` of the generic TE compute, marking the PrimFunc ``edgert.op = "lutmatmul"`` with its
layout (:mod:`edgert.ops.lut_matmul.tvm_rewrite`). On x86 targets with AVX2,
:func:`schedule_lut_matmuls` replaces each such call whose packed weight (and scales / zero
points) are constants by two hand-written TIR kernels:

1. **Tables** (``lut_tables_x86_*``): :mod:`edgert.ops.lut_matmul.tvm_tables`.
2. **Lookups** (``lut_matmul_x86_*``, parallel over tiles of 32 columns, every row inside a
   task so each weight byte is read from DRAM once), on the weight re-packed at compile time
   into ymm words (:mod:`edgert.ops.lut_matmul.tvm_pack_x86`). Per word: ``lo = w & 15``,
   ``hi = (w >> 4) & 15``, one ``vpshufb`` each (32 lookups), then ``vpmaddubsw`` against the
   multipliers ``(2**2p, 2**(2p+1))`` per byte pair: the bit-plane merge and the widening to
   int16 in one instruction (the odd plane uses ``(2**i, 0)`` and ``(0, 2**i)``). Four int16
   accumulators (8 columns x 2 lanes each) per byte plane; per lane at most ``tile_k / 8``
   lookups of each plane per K tile, ``|sum| <= 8 * 255 * 15 < 2**15`` (unsigned low bytes
   included); the two lanes are then sign-extended (``vpmovsxwd``), added, shifted (8 for the
   high byte plane, the table shift for int8 tables of the integer variant) and added into
   int32: at each K tile end for int8 activations, every
   :func:`~edgert.ops.lut_matmul.tvm_pack_x86.lookup_span` K tiles (the whole group at group
   128) for float32 activations, whose int8 tables keep longer int16 sums in range. The group
   epilogue and the loops: :mod:`edgert.ops.lut_matmul.tvm_lookup`. Stores of the last,
   ragged column tile are masked (``vmaskmov``). Weight words are prefetched
   :data:`PREFETCH` bytes ahead (``prefetcht2``).
   **1-bit weights** (int8 tables, ymm) skip ``vpmaddubsw`` (one a cycle on Zen 3; the plain
   kernel needs four a word at one bit, with multipliers ``(1, 0)`` and ``(0, 1)``): the table
   bytes are biased to ``q + 128`` (one ``vpxor``), each ``vpshufb`` result is added as
   uint16 words (``256 u_odd + u_even``, wrapping) and, shifted right by 8, as ``u_odd``; the
   span's exact sums come back at the widening (:func:`_biased_sums`). 4096x4096, one
   thread, the kernel alone (CPU time, loaded Zen 3, 2026-12-08): 0.89x the plain kernel's
   time from cache; from DRAM within that machine's noise (docs/benchmarks.md).
   **VNNI variant** (targets with AVX-512 VNNI, 4-bit weights): the words are re-packed so
   that a dword holds one column's four planes; a 4-group's table is broadcast to both lanes
   and each ``vpshufb`` result goes through one ``vpdpbusd`` against the multipliers
   ``(1, 2, 4, 8)``: plane merge, widening and accumulation into int32 at once (the unsigned
   low byte plane of int16 tables as its unsigned operand). Eight int32 accumulators, no int16
   stage, the same results.
3. **Dequantize** (``dequant = 1``, float32 activations): :mod:`edgert.ops.lut_matmul.tvm_dequant`.

Results: bit-exact with :func:`edgert.ops.lut_matmul.spec.reference` for int8 and for float32
activations: the float epilogue keeps the reference's operations and order, and every product
goes through ``llvm.arithmetic.fence`` so that LLVM (which TVM lets contract) emits no FMA.

Only AVX2 instructions are used (``vpshufb``, ``vpmaddubsw``, ``vpmovsxwd``, ``vmaskmov``),
plus ``vpdpbusd`` on VNNI targets. Not rewritten (generic compute kept): a weight, scale
or zero point that is not a constant, a layout with ``tile_n != 32``.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from edgert.ops.lut_matmul import tvm_dequant
from edgert.ops.lut_matmul.layout import LutLayout
from edgert.ops.lut_matmul.spec import zero_constant
from edgert.ops.lut_matmul.tvm_lookup import lookup_prim_func
from edgert.ops.lut_matmul.tvm_pack_x86 import (
    TN, VNNI_MIN_ROWS, LutOperands, geometry, lookup_span, repack_columns, repack_weight,
    repack_weight_vnni, repack_weight_zmm, uses_vnni, uses_zmm, wants_vnni)
from edgert.ops.lut_matmul.tvm_rewrite import LutKernels, rewrite_lut_matmuls
from edgert.ops.lut_matmul.tvm_tables import intermediate_shapes, table_kernel

__all__ = ["PREFETCH", "PREFETCH_LOCALITY", "TN", "VNNI_MIN_ROWS", "LutOperands", "geometry",
           "intermediate_shapes", "lookup_kernel", "lookup_span", "repack_columns",
           "repack_weight", "repack_weight_vnni", "repack_weight_zmm", "schedule_lut_matmuls",
           "table_kernel", "uses_vnni", "uses_zmm", "wants_vnni"]

PREFETCH = 16384
"""Bytes ahead of the K tile in hand at which the lookup kernel prefetches weight words (every
bit width). Each K tile's words are consumed in a few hundred cycles, faster than the hardware
prefetcher runs ahead of the stream. 4096x4096 from DRAM (64 MB of rotated copies in huge
pages), the kernel alone, Zen 4, one interleaved process per width (a one-off measurement made
when the distance was chosen, not re-run by a benchmark); before (2048 bytes ahead
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
PSHUF = {32: "llvm.x86.avx2.pshuf.b", 64: "llvm.x86.avx512.pshuf.b.512"}
"""``vpshufb`` by vector bytes: ymm (AVX2), zmm (AVX-512BW)."""
DPBUSD = "llvm.x86.avx512.vpdpbusd.256"
MADDUBS = {32: "llvm.x86.avx2.pmadd.ub.sw", 64: "llvm.x86.avx512.pmaddubs.w.512"}
"""``vpmaddubsw`` by vector bytes."""
MULT = 0x08040201
"""``vpdpbusd`` multipliers of the VNNI kernel: byte (plane) ``e`` of a dword times ``2**e``."""


def schedule_lut_matmuls(mod: Any, tvm_target: Any, vnni: bool = False,
                         zmm: bool = False) -> Any:
    """Replace the generic LutMatMul calls of a Relax module by the AVX2 kernels (the caller
    checks that the target has AVX2; ``vnni``: it has AVX-512 VNNI, and 4-bit weights with
    enough static rows get the ``vpdpbusd`` lookups, :func:`wants_vnni`; ``zmm``: it has
    AVX-512BW, and the other lookups run on zmm registers where :func:`uses_zmm`); see
    :func:`~edgert.ops.lut_matmul.tvm_rewrite.rewrite_lut_matmuls`."""
    def variant(layout: LutLayout, rows: Any) -> dict[str, bool]:
        if vnni and wants_vnni(layout, rows):
            return {"vnni": True}
        return {"zmm": True} if zmm and uses_zmm(layout) else {}

    return rewrite_lut_matmuls(mod, tvm_target, LutKernels(
        "x86", table_kernel, lookup_kernel, LutOperands, lambda layout: layout.tile_n == TN,
        tvm_dequant, variant=variant, half_scales=True))


def lookup_kernel(layout: LutLayout, float_acts: bool, table_bits: int, has_zp: bool,
                  cores: int, name: str = "lut_matmul_x86", prefetch: int | None = None,
                  vnni: bool = False, zmm: bool = False, half_scales: bool = False) -> Any:
    """Lookup PrimFunc. Float: ``(QT, TS, RS, W2, S [NT, NG, 32] f32, [ZC [NT, NG, 32] f32],
    OUT f32 [R, N])``; int8: ``(QT, SH, RSUM, W2, [ZC [NT, NG, 32] i32], OUT i32 [R, N])``
    (``ZC`` is read only with zero points; otherwise the symmetric constant). ``prefetch``:
    bytes ahead to prefetch weight words (None: :data:`PREFETCH`; 0: none).

    ``vnni`` (AVX-512 VNNI targets; 4-bit weights, see :func:`uses_vnni`): the weight comes
    from :func:`repack_weight_vnni` and each lookup is merged over its four planes and added
    into int32 by one ``vpdpbusd`` against the multipliers ``(1, 2, 4, 8)`` (the table
    broadcast to both lanes), instead of ``vpmaddubsw`` + ``vpaddw`` and the widening.

    ``zmm`` (AVX-512BW targets, :func:`uses_zmm`): the same lookups on 64-byte vectors, two
    4-group pairs per ``vpshufb`` (four tables, one per 128-bit lane), on the weight from
    :func:`repack_weight_zmm`; the four lanes are added when the int16 sums are widened.

    ``half_scales`` (float activations): ``S`` is float16 (:attr:`LutOperands.half_scales`),
    widened by ``vcvtph2ps``: the same values, half the scale bytes a call reads."""
    from tvm.script import tirx as T

    if zmm and not uses_zmm(layout):
        raise ValueError(f"the zmm lookups need an even count of 4-group pairs per K tile: "
                         f"{layout}")
    p = _lookup_params(layout, float_acts, table_bits, cores, prefetch, vnni and not zmm, zmm)
    nibbles = _nibbles(T, p.VB)
    prefetch_words = _prefetch_words(T, p)
    k_tile = (_k_tile_vnni(T, p, nibbles, prefetch_words) if p.use_vnni
              else _k_tile(T, p, nibbles, prefetch_words))
    # rows by pairs (float activations, ymm): a weight word loaded and split once for two
    # rows; 2 and 4 bits in two column passes (_k_tile_halves): with all eight int16
    # accumulators live the two-row loop spilled and ran 0.84-1.42x the one-row kernel's
    # time at 2 bits, M = 8, depending on where the buffers fell (one thread, CPU time, Zen 3,
    # 2026-12-08); 3 bits (an odd plane word serving every column) keeps one row at a time
    k_tile2 = (_k_tile(T, p, nibbles, prefetch_words, rows=2) if p.BIASED and float_acts
               else _k_tile_halves(T, p, nibbles, prefetch_words)
               if float_acts and not (p.use_vnni or zmm) and p.ODD == 0 else None)

    def fence(x):
        return T.call_llvm_pure_intrin("float32x8", "llvm.arithmetic.fence", x)

    return lookup_prim_func(
        float_acts=float_acts, has_zp=has_zp, lanes=8,
        w_shape=(p.NT, p.KT, p.TK2, 4 if p.use_vnni else p.NV, 32),
        k_tile=k_tile, store=_masked_store(T, p), fence=fence, KT=p.KT, TK2=p.TK2,
        NB=p.NB, NT=p.NT, NG=p.NG, GK=p.GK, N=p.N, ZC0=p.ZC0, PAR=p.PAR,
        span=p.SPAN, scale_dtype="float16" if half_scales else "float32", k_tile2=k_tile2,
    ).with_attr("global_symbol", name)


def _lookup_params(layout: LutLayout, float_acts: bool, table_bits: int, cores: int,
                   prefetch: int | None, vnni: bool, zmm: bool = False) -> SimpleNamespace:
    """The lookup kernel's constants (names as in the TIR macros); ``VB``: bytes a vector
    (32 ymm, 64 zmm), ``PAIRS``: 4-group pairs a vector (one per two 128-bit lanes)."""
    KT, TK4, TK2, NP, ODD, NV = geometry(layout)
    use_vnni = uses_vnni(layout, vnni)
    OI = layout.bits - 1                             # the odd plane
    return SimpleNamespace(
        KT=KT, TK2=TK2, NP=NP, ODD=ODD, NV=NV, N=layout.N, NT=layout.n_tiles,
        VB=64 if zmm else 32, PAIRS=2 if zmm else 1,
        NG=layout.n_groups, GK=layout.group_size // layout.tile_k,   # K tiles per weight group
        NB=2 if (not float_acts and table_bits == 16) else 1,
        SHIFTED=not float_acts and table_bits == 8,
        BIASED=layout.bits == 1 and not zmm and (float_acts or table_bits == 8),  # 1-bit ymm
        ZC0=int(zero_constant(layout, None)[0, 0]), PAR=cores > 1, use_vnni=use_vnni,
        SPAN=lookup_span(layout, float_acts, use_vnni),
        M_ODD0=1 << OI, M_ODD1=(1 << OI) << 8,       # int16 multiplier words of the odd plane
        LINES=(TK2 * NV * 32 + 63) // 64,            # cache lines of one K tile's weight words
        prefetch=PREFETCH if prefetch is None else prefetch, LOC=PREFETCH_LOCALITY)


def _nibbles(T: Any, vb: int = 32) -> Any:
    """``nibbles(w, h)``: the vpshufb indices of a uint8 x ``vb`` word's low (h = 0) or high
    nibbles."""

    def nibbles(w, h):
        # the 4-bit fields at bit 4h of a word's bytes, as vpshufb indices
        return T.reinterpret(f"int8x{vb}", T.bitwise_and(
            T.shift_right(w, T.Broadcast(T.uint8(4 * h), vb)), T.Broadcast(T.uint8(15), vb)))

    return nibbles


def _prefetch_words(T: Any, p: SimpleNamespace) -> Any:
    """Macro ``prefetch_words(Wf, nt, kt)``."""
    prefetch, LINES, KT, TK2, NV, LOC = p.prefetch, p.LINES, p.KT, p.TK2, p.NV, p.LOC

    @T.macro
    def prefetch_words(Wf, nt, kt):
        # the weight words `prefetch` bytes ahead of K tile kt (both layouts: NV words a pair)
        if prefetch > 0:
            for i in T.unroll(LINES):
                T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0", T.address_of(
                    Wf[((nt * KT + kt) * TK2) * NV * 32 + prefetch + i * 64]), 0, LOC, 1))

    return prefetch_words


def _pair_lookups(T: Any, prm: SimpleNamespace, nibbles: Any, unsigned: bool) -> Any:
    """Macro ``lookups(acc16, base, tab, Wf, w0)``: the ``vpshufb`` + ``vpmaddubsw`` lookups of
    one step (``PAIRS`` 4-group pairs, every word of one column tile) into int16 accumulators
    of ``VB / 2`` lanes; ``unsigned``: the table bytes are the unsigned low byte plane of int16
    tables."""
    NP, ODD, NV, M_ODD0, M_ODD1, VB = prm.NP, prm.ODD, prm.NV, prm.M_ODD0, prm.M_ODD1, prm.VB
    H = VB // 2                                      # int16 lanes of an accumulator
    i8, i16, ps, ma = f"int8x{VB}", f"int16x{H}", PSHUF[VB], MADDUBS[VB]

    @T.macro
    def lookups(acc16, base, tab, Wf, w0):
        # one step, every word (all planes) of one tile; lookups into acc16[base..]
        for p in T.unroll(NP):
            mult = T.reinterpret(i8, T.Broadcast(
                T.shift_left(T.int16(513), T.Cast("int16", 2 * p)), H))
            for v in T.unroll(2):
                w = Wf[T.Ramp(w0 + (2 * p + v) * VB, 1, VB)]
                for h in T.unroll(2):
                    idx = nibbles(w, h)
                    look = T.call_llvm_pure_intrin(i8, ps, tab, idx)
                    a0: T.let[T.int32] = base + (2 * v + h) * H
                    if unsigned:
                        acc16[T.Ramp(a0, 1, H)] = acc16[T.Ramp(a0, 1, H)] + \
                            T.call_llvm_pure_intrin(i16, ma, look, mult)
                    else:
                        acc16[T.Ramp(a0, 1, H)] = acc16[T.Ramp(a0, 1, H)] + \
                            T.call_llvm_pure_intrin(i16, ma, mult, look)
        if ODD == 1:
            w = Wf[T.Ramp(w0 + (NV - 1) * VB, 1, VB)]
            for h in T.unroll(2):
                idx = nibbles(w, h)
                look = T.call_llvm_pure_intrin(i8, ps, tab, idx)
                for e in T.unroll(2):
                    mult = T.reinterpret(i8, T.Broadcast(
                        T.Select(e == 0, T.int16(M_ODD0), T.int16(M_ODD1)), H))
                    a0: T.let[T.int32] = base + (2 * h + e) * H
                    if unsigned:
                        acc16[T.Ramp(a0, 1, H)] = acc16[T.Ramp(a0, 1, H)] + \
                            T.call_llvm_pure_intrin(i16, ma, look, mult)
                    else:
                        acc16[T.Ramp(a0, 1, H)] = acc16[T.Ramp(a0, 1, H)] + \
                            T.call_llvm_pure_intrin(i16, ma, mult, look)
    return lookups


def _biased_lookups(T: Any, prm: SimpleNamespace, nibbles: Any) -> Any:
    """Macro ``lookups(acc16, base, tab, Wf, w0)`` of 1-bit weights (int8 tables): the table bytes
    biased to ``u = q + 128`` (``q ^ 0x80``, 1..255), then per nibble half one ``vpshufb``
    whose result is added twice into uint16 accumulators: as it is (words ``256 u_odd +
    u_even``, wrapping) at ``acc16[base + 2h H]`` and shifted right by 8 (``u_odd``) at
    ``acc16[base + (2h + 1) H]``: no ``vpmaddubsw`` (one a cycle on Zen 3, four a word in the plain
    kernel). :func:`_biased_sums` recovers the exact sums."""
    VB = prm.VB
    H = VB // 2
    i8, u16, ps = f"int8x{VB}", f"uint16x{H}", PSHUF[VB]

    @T.macro
    def lookups(acc16, base, tab, Wf, w0):
        ub = T.bitwise_xor(tab, T.Broadcast(T.int8(-128), VB))
        w = Wf[T.Ramp(w0, 1, VB)]
        for h in T.unroll(2):
            look = T.reinterpret(u16, T.call_llvm_pure_intrin(i8, ps, ub, nibbles(w, h)))
            a0: T.let[T.int32] = base + 2 * h * H
            acc16[T.Ramp(a0, 1, H)] = acc16[T.Ramp(a0, 1, H)] + look
            acc16[T.Ramp(a0 + H, 1, H)] = acc16[T.Ramp(a0 + H, 1, H)] + \
                T.shift_right(look, T.Broadcast(T.uint16(8), H))
    return lookups


def _biased_sums(T: Any, p: SimpleNamespace) -> Any:
    """Macro ``sums(acc16, base, shift, acc32, c0)``: the biased lookups' uint16 accumulators
    of one span (:func:`_biased_lookups`, from ``base``) added into the int32 accumulators
    (from ``c0``). ``sum u_odd`` is the shifted
    sum, ``sum u_even = raw - 256 sum u_odd`` modulo ``2**16``, exact; the two 128-bit lanes
    (4-groups ``2 fs`` and ``2 fs + 1`` of the same 8 columns) are added in uint16 (two
    ``vperm2i128`` put columns ``16h .. 16h + 15`` in order), zero-extended, and the bias, 128
    per lookup, is taken off. At most ``2 * TK2 * SPAN`` lookups of at most 255 a column and
    span (:func:`~edgert.ops.lut_matmul.tvm_pack_x86.lookup_span`): below ``2**16``. Byte
    ``2j + e`` of nibble half ``h`` is column ``16h + 8e + j``."""
    H = 16
    BIAS = 128 * 2 * p.TK2 * p.SPAN                  # 128 per 4-group of the span

    def widened(z, half, shift):
        # columns 8 half .. 8 half + 7 of the merged sums z, as int32 with the bias taken off
        v = T.Cast("int32x8", T.Shuffle([z], list(range(8 * half, 8 * half + 8))))
        return T.shift_left(v - T.Broadcast(T.int32(BIAS), 8), T.Broadcast(shift, 8))

    @T.macro
    def sums(acc16, base, shift, acc32, c0):
        for h in T.unroll(2):
            odd: T.let[T.uint16x16] = acc16[T.Ramp(base + (2 * h + 1) * H, 1, H)]
            even: T.let[T.uint16x16] = acc16[T.Ramp(base + 2 * h * H, 1, H)] - T.shift_left(
                odd, T.Broadcast(T.uint16(8), H))
            z: T.let[T.uint16x16] = T.Shuffle([even, odd], list(range(8)) + list(range(16, 24))) \
                + T.Shuffle([even, odd], list(range(8, 16)) + list(range(24, 32)))
            a0: T.let[T.int32] = c0 + 16 * h
            acc32[T.Ramp(a0, 1, 8)] = acc32[T.Ramp(a0, 1, 8)] + widened(z, 0, shift)
            acc32[T.Ramp(a0 + 8, 1, 8)] = acc32[T.Ramp(a0 + 8, 1, 8)] + widened(z, 1, shift)
    return sums


def _k_tile(T: Any, p: SimpleNamespace, nibbles: Any, prefetch_words: Any,
            rows: int = 1) -> Any:
    """Macro ``k_tile(nt, r, kt0, Qf, SHf, Wf, acc32)``: ``SPAN`` K tiles of lookups in int16,
    then widened into the int32 accumulators (the ``VB / 16`` 128-bit lanes, each a different
    4-group of the same 8 columns, added in int32). ``rows`` activation rows ``r ..`` at once
    (each weight word loaded and split into nibbles once for all of them), row ``r + i``
    into ``acc32[i * TN ..]``."""
    NB, SPAN, KT, TK2, NV, SHIFTED = p.NB, p.SPAN, p.KT, p.TK2, p.NV, p.SHIFTED
    VB, PAIRS, BIASED = p.VB, p.PAIRS, p.BIASED
    H, LANES = VB // 2, VB // 16
    ACC = "uint16" if BIASED else "int16"
    ACCS = NB * 4                                    # accumulators a row
    look_signed = _pair_lookups(T, p, nibbles, False)
    look_unsigned = _pair_lookups(T, p, nibbles, True)
    look_biased = _biased_lookups(T, p, nibbles)
    biased_sums = _biased_sums(T, p)

    def tables(Qf, q0, nb):
        # the tables of PAIRS 4-group pairs from q0, byte plane nb (a pair's 32 bytes: two)
        if PAIRS == 1:
            return Qf[T.Ramp(q0 + nb * 32, 1, 32)]
        return T.Shuffle([Qf[T.Ramp(q0 + nb * 32, 1, 32)],
                          Qf[T.Ramp(q0 + (NB + nb) * 32, 1, 32)]], list(range(64)))

    def lane_sum(acc16, base):
        # the LANES 128-bit lanes of the int16 accumulator at base, widened and added
        total = T.Cast("int32x8", acc16[T.Ramp(base, 1, 8)])
        for ln in range(1, LANES):
            total = total + T.Cast("int32x8", acc16[T.Ramp(base + ln * 8, 1, 8)])
        return total

    @T.macro
    def widen(acc16, base, kt0, r, SHf, acc32, c0):
        for nb in T.unroll(NB):
            for a in T.unroll(4):
                both: T.let[T.int32x8] = lane_sum(acc16, base + (nb * 4 + a) * H)
                if SHIFTED:                          # (SPAN = 1)
                    acc32[T.Ramp(c0 + a * 8, 1, 8)] = acc32[T.Ramp(c0 + a * 8, 1, 8)] + \
                        T.shift_left(both, T.Broadcast(SHf[r * KT + kt0], 8))
                else:
                    acc32[T.Ramp(c0 + a * 8, 1, 8)] = acc32[T.Ramp(c0 + a * 8, 1, 8)] + \
                        T.shift_left(both, T.Broadcast(T.int32(8) * nb, 8))

    @T.macro
    def k_tile(nt, r, kt0, Qf, SHf, Wf, acc32):
        acc16 = T.alloc_buffer((rows * ACCS * H,), ACC)
        for i in T.unroll(rows * ACCS):
            acc16[T.Ramp(i * H, 1, H)] = T.Broadcast(T.Cast(ACC, 0), H)
        for kk in range(SPAN):
            kt: T.let[T.int32] = kt0 + kk
            prefetch_words(Wf, nt, kt)
            for fs in range(TK2 // PAIRS):
                w0: T.let[T.int32] = ((nt * KT + kt) * TK2 + fs * PAIRS) * NV * 32
                for i in T.unroll(rows):
                    q0: T.let[T.int64] = (((r + i) * KT + kt) * TK2 + fs * PAIRS) * NB * 32
                    b0: T.let[T.int32] = i * ACCS * H
                    if NB == 2:
                        tab0 = tables(Qf, q0, 0)
                        look_unsigned(acc16, b0, tab0, Wf, w0)
                        tab1 = tables(Qf, q0, 1)
                        look_signed(acc16, b0 + 4 * H, tab1, Wf, w0)
                    elif BIASED:
                        look_biased(acc16, b0, tables(Qf, q0, 0), Wf, w0)
                    else:
                        tab = tables(Qf, q0, 0)
                        look_signed(acc16, b0, tab, Wf, w0)
        for i in T.unroll(rows):
            if BIASED and SHIFTED:                   # (SPAN = 1)
                biased_sums(acc16, i * ACCS * H, SHf[(r + i) * KT + kt0], acc32, i * TN)
            elif BIASED:
                biased_sums(acc16, i * ACCS * H, 0, acc32, i * TN)
            else:
                widen(acc16, i * ACCS * H, kt0, r + i, SHf, acc32, i * TN)

    return k_tile


def _k_tile_halves(T: Any, p: SimpleNamespace, nibbles: Any, prefetch_words: Any) -> Any:
    """Macro ``k_tile(nt, r, kt0, Qf, SHf, Wf, acc32)`` of two rows ``r``, ``r + 1`` (float
    activations, int8 tables, an even bit count): the tile's columns in two passes (``v``:
    columns ``16 v .. 16 v + 15``, the words ``2p + v`` of every plane pair), each word loaded
    and split into nibbles once for both rows, two int16 accumulators a row and pass. Keeping
    all four a row for both rows live at once spills them (about 200 stack accesses a loop at
    2 bits); a pass needs four in all."""
    NP, SPAN, KT, TK2, NV, VB = p.NP, p.SPAN, p.KT, p.TK2, p.NV, p.VB
    H = VB // 2
    i8, i16, ps, ma = f"int8x{VB}", f"int16x{H}", PSHUF[VB], MADDUBS[VB]

    @T.macro
    def k_tile(nt, r, kt0, Qf, SHf, Wf, acc32):
        for v in T.unroll(2):
            acc16 = T.alloc_buffer((4 * H,), "int16")
            for i in T.unroll(4):
                acc16[T.Ramp(i * H, 1, H)] = T.Broadcast(T.int16(0), H)
            for kk in range(SPAN):
                kt: T.let[T.int32] = kt0 + kk
                prefetch_words(Wf, nt, kt)
                for fs in range(TK2):
                    w0: T.let[T.int32] = ((nt * KT + kt) * TK2 + fs) * NV * 32
                    for pp in T.unroll(NP):
                        mult = T.reinterpret(i8, T.Broadcast(
                            T.shift_left(T.int16(513), T.Cast("int16", 2 * pp)), H))
                        w = Wf[T.Ramp(w0 + (2 * pp + v) * VB, 1, VB)]
                        for h in T.unroll(2):
                            idx = nibbles(w, h)
                            for i in T.unroll(2):
                                tab = Qf[T.Ramp((((r + i) * KT + kt) * TK2 + fs) * 32, 1, 32)]
                                a0: T.let[T.int32] = (2 * i + h) * H
                                acc16[T.Ramp(a0, 1, H)] = acc16[T.Ramp(a0, 1, H)] + \
                                    T.call_llvm_pure_intrin(i16, ma, mult, T.call_llvm_pure_intrin(
                                        i8, ps, tab, idx))
            for i in T.unroll(2):
                for h in T.unroll(2):
                    c0: T.let[T.int32] = i * TN + (2 * v + h) * 8
                    acc32[T.Ramp(c0, 1, 8)] = acc32[T.Ramp(c0, 1, 8)] + \
                        T.Cast("int32x8", acc16[T.Ramp((2 * i + h) * H, 1, 8)]) + \
                        T.Cast("int32x8", acc16[T.Ramp((2 * i + h) * H + 8, 1, 8)])

    return k_tile


def _k_tile_vnni(T: Any, p: SimpleNamespace, nibbles: Any, prefetch_words: Any) -> Any:
    """Macro ``k_tile(nt, r, kt0, Qf, SHf, Wf, acc32)`` of the VNNI kernel: ``vpdpbusd``
    straight into int32."""
    NB, SPAN, KT, TK2, NV, SHIFTED = p.NB, p.SPAN, p.KT, p.TK2, p.NV, p.SHIFTED

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
                                    "int8x32", PSHUF[32], tab, idx)
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

    return k_tile_vnni


def _masked_store(T: Any, p: SimpleNamespace) -> Any:
    """Macro ``store(Of, y, r, nt)``: a row of a column tile, masked for a ragged last tile."""
    N = p.N

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

    return store
