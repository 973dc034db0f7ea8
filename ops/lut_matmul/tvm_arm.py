"""aarch64 NEON kernel for ``edgert.LutMatMul`` (T-MAC table lookup), wired into the CPU lowering.

The aarch64 counterpart of :mod:`edgert.ops.lut_matmul.tvm_x86` (same structure, same
Relax rewrite, same bit-exactness): on ``aarch64`` CPU targets, :func:`schedule_lut_matmuls`
replaces each generic LutMatMul ``call_tir`` (PrimFunc marked ``edgert.op = "lutmatmul"``)
whose packed weight (and scales / zero points) are constants by two TIR kernels:

1. **Tables** (``lut_tables_arm_*``): the table kernel
   (:func:`edgert.ops.lut_matmul.tvm_tables.table_kernel`) is generic TIR (scalars and
   8-lane vectors, no intrinsics), so it is reused as is (given an ``_arm`` name). Its table bytes
   ``[R, K/tile_k, TK2, NB, 32]`` hold the 16-byte table of 4-group ``fi`` of a K tile at byte
   ``(fi % 2) * 16`` of pair ``fi // 2``: exactly one NEON register per table, loaded with one
   ``ldr q``. (Float32 activations: int8 tables, table scale and float row sum per weight
   group; int8 activations: exact int16 tables as two byte planes, ``table_bits = 16``, or
   int8 tables with a power-of-two shift per K tile, ``table_bits = 8``.)
2. **Lookups** (``lut_matmul_arm_*``, parallel over tiles of 32 columns, every activation row
   inside a task so each weight byte is read from DRAM once).

**Weight re-pack for 16-byte registers** (:func:`repack_weight`, at compile time, from the
layout-v1 constant): uint8 ``[NT, K/tile_k, TK4, bits, 16]`` (``NT = ceil(N / 32)``,
``TK4 = tile_k / 4``), i.e. one 16-byte word per (column tile, 4-group, bit plane): byte ``j``
holds the nibble of plane ``i`` of column ``32 nt + j`` in its low 4 bits and of column
``32 nt + 16 + j`` in its high 4 bits (columns past N: zero nibbles). The words of one column
tile are one sequential stream in the order the kernel reads them (K tile, 4-group, plane).
Per word: ``lo = w & 15`` and ``hi = w >> 4`` (``ushr``, already 0..15), one ``tbl`` each
(``llvm.aarch64.neon.tbl1``, v16i8: 16 lookups an instruction) against the 4-group's table,
then the bit-plane merge and the widening in one step: ``acc16 += sext(look) << i``
(``sshll``/``sshll2`` + ``add``) into four int16x8 accumulators (32 columns).

int16 bounds per K tile (at most ``tile_k / 4 <= 16`` lookups per plane): int8 tables
``|sum| <= 16 * 127 * (1 + 2 + 4 + 8) = 30480 < 2**15``; the low byte plane of int16 tables is
unsigned, ``0 <= sum <= 16 * 255 * 15 = 61200 < 2**16``, so it is accumulated in uint16 and
zero-extended; the high byte plane is in [-2, 2] (``|T| <= 512``). At each K tile end the
int16 sums are widened to int32 (``(lo + (hi << 8))`` for int16 tables, ``<< shift`` for int8
tables of the integer variant) and added into 8 int32x4 accumulators.

Float32 variant: at each weight-group end ``y += s[g, n] * ((ts * float(acc) + zc * r) *
0.5)`` in float32 (the reference's expression and order; scales re-packed to ``[NT, NG, 32]``),
every product through ``llvm.arithmetic.fence`` so LLVM emits no ``fmla`` (TVM lets it
contract): bit-exact with :func:`edgert.ops.lut_matmul.spec.reference`. Integer variant: ``acc +
sum_g zc[g, n] * rowsum[g]`` as int32, exact. The ragged last column tile is stored with a
scalar loop (no masked stores on NEON).

Any ``tile_n`` of the layout is accepted (the kernel's 32-column tiles come from the re-pack);
not rewritten: a weight, scale or zero point that is not a constant.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from edgert.ops.lut_matmul import tvm_tables
from edgert.ops.lut_matmul.layout import G, LutLayout
from edgert.ops.lut_matmul.spec import plane_nibbles, zero_constant
from edgert.ops.lut_matmul.tvm_lookup import lookup_prim_func
from edgert.ops.lut_matmul.tvm_rewrite import LutKernels, rewrite_lut_matmuls

TN = 32                 # columns per tile: two 16-lane lookups per (4-group, plane) word
TBL = "llvm.aarch64.neon.tbl1"
FENCE = "llvm.arithmetic.fence"


def _geometry(layout: LutLayout) -> tuple[int, int, int, int]:
    """``(KT, TK4, TK2, NT)``: K tiles, 4-groups per K tile, table pairs per K tile (the table
    kernel's layout), 32-column tiles."""
    kt, tk4 = layout.K // layout.tile_k, layout.tile_k // G
    return kt, tk4, (tk4 + 1) // 2, -(-layout.N // TN)


# ---------------------------------------------------------------- packing (numpy)

def repack_weight(planes: np.ndarray, layout: LutLayout) -> np.ndarray:
    """The layout-v1 packed weight re-packed for the NEON kernel: uint8 ``[NT, KT, TK4, bits,
    16]`` (module docstring)."""
    kt, tk4, _, nt = _geometry(layout)
    b = layout.bits
    nib = np.zeros((b, layout.K // G, nt * TN), np.uint8)
    nib[:, :, :layout.N] = plane_nibbles(planes, layout)
    nib = nib.reshape(b, kt, tk4, nt, 2, 16)                   # column = 32 nt + 16 h + j
    words = nib[..., 0, :] | (nib[..., 1, :] << 4)              # [b, kt, tk4, nt, 16]
    return np.ascontiguousarray(words.transpose(3, 1, 2, 0, 4))


def repack_columns(values: np.ndarray, layout: LutLayout, dtype: str) -> np.ndarray:
    """Per (group, column) values [NG, N] -> ``[NT, NG, 32]`` of ``dtype`` (zero padded)."""
    nt, ng = _geometry(layout)[3], layout.n_groups
    out = np.zeros((ng, nt * TN), dtype)
    out[:, :layout.N] = values
    return np.ascontiguousarray(out.reshape(ng, nt, TN).transpose(1, 0, 2))


class LutOperands:
    """Compile-time operands of one LutMatMul for the NEON kernels (numpy)."""

    def __init__(self, layout: LutLayout, planes: np.ndarray, scales: np.ndarray | None,
                 zero_points: np.ndarray | None, float_acts: bool) -> None:
        self.layout = layout
        self.w2 = repack_weight(planes, layout)
        self.has_zp = zero_points is not None
        zc = zero_constant(layout, zero_points)
        if float_acts:
            self.scales = repack_columns(scales, layout, "float32")
            self.zc = repack_columns(zc.astype(np.float32), layout, "float32")
        else:
            self.scales = None
            self.zc = repack_columns(zc, layout, "int32")


# ---------------------------------------------------------------- the kernels

def table_kernel(layout: LutLayout, float_acts: bool, table_bits: int, cores: int,
                 name: str = "lut_tables_arm") -> Any:
    """The tables PrimFunc: the portable one of :mod:`edgert.ops.lut_matmul.tvm_tables`."""
    return tvm_tables.table_kernel(layout, float_acts, table_bits, cores, name)


intermediate_shapes = tvm_tables.intermediate_shapes


@lru_cache(maxsize=None)
def lookup_kernel(layout: LutLayout, float_acts: bool, table_bits: int, has_zp: bool,
                  cores: int, name: str = "lut_matmul_arm") -> Any:
    """Lookup PrimFunc. Float: ``(QT, TS, RS, W2, S [NT, NG, 32] f32, ZC [NT, NG, 32] f32,
    OUT f32 [R, N])``; int8: ``(QT, SH, RSUM, W2, ZC [NT, NG, 32] i32, OUT i32 [R, N])``
    (``ZC`` is read only with zero points; otherwise the symmetric constant)."""
    from tvm.script import tirx as T

    KT, TK4, TK2, NT = _geometry(layout)
    N, NG, B = layout.N, layout.n_groups, layout.bits
    GK = layout.group_size // layout.tile_k          # K tiles per weight group
    NB = 2 if (not float_acts and table_bits == 16) else 1
    SHIFTED = not float_acts and table_bits == 8
    ZC0 = int(zero_constant(layout, None)[0, 0])
    PAR = cores > 1

    @T.macro
    def k_tile(nt, r, kt, Qf, SHf, Wf, acc32):
        acc_hi = T.alloc_buffer((TN,), "int16")     # signed: int8 tables / the high byte plane
        acc_lo = T.alloc_buffer((TN,), "uint16")    # the unsigned low byte plane (NB == 2)
        for c in T.unroll(2):
            acc_hi[T.Ramp(c * 16, 1, 16)] = T.Broadcast(T.int16(0), 16)
            acc_lo[T.Ramp(c * 16, 1, 16)] = T.Broadcast(T.uint16(0), 16)
        for fi in range(TK4):
            q0: T.let[T.int64] = ((r * KT + kt) * TK2 + fi // 2) * NB * 32 + (fi % 2) * 16
            w0: T.let[T.int32] = ((nt * KT + kt) * TK4 + fi) * B * 16
            for i in T.unroll(B):
                w: T.let[T.uint8x16] = Wf[T.Ramp(w0 + i * 16, 1, 16)]
                for h in T.unroll(2):
                    idx: T.let[T.int8x16] = T.reinterpret("int8x16", T.bitwise_and(
                        T.shift_right(w, T.Broadcast(T.uint8(4 * h), 16)),
                        T.Broadcast(T.uint8(15), 16)))
                    look: T.let[T.int8x16] = T.call_llvm_pure_intrin(
                        "int8x16", TBL, Qf[T.Ramp(q0, 1, 16)], idx)
                    if NB == 2:
                        acc_lo[T.Ramp(h * 16, 1, 16)] = acc_lo[T.Ramp(h * 16, 1, 16)] + \
                            T.shift_left(T.Cast("uint16x16", T.reinterpret("uint8x16", look)),
                                         T.Broadcast(T.Cast("uint16", i), 16))
                        look_hi: T.let[T.int8x16] = T.call_llvm_pure_intrin(
                            "int8x16", TBL, Qf[T.Ramp(q0 + 32, 1, 16)], idx)
                        acc_hi[T.Ramp(h * 16, 1, 16)] = acc_hi[T.Ramp(h * 16, 1, 16)] + \
                            T.shift_left(T.Cast("int16x16", look_hi),
                                         T.Broadcast(T.Cast("int16", i), 16))
                    else:
                        acc_hi[T.Ramp(h * 16, 1, 16)] = acc_hi[T.Ramp(h * 16, 1, 16)] + \
                            T.shift_left(T.Cast("int16x16", look),
                                         T.Broadcast(T.Cast("int16", i), 16))
        for c in T.unroll(8):
            if NB == 2:
                acc32[T.Ramp(c * 4, 1, 4)] = acc32[T.Ramp(c * 4, 1, 4)] + (
                    T.Cast("int32x4", acc_lo[T.Ramp(c * 4, 1, 4)])
                    + T.shift_left(T.Cast("int32x4", acc_hi[T.Ramp(c * 4, 1, 4)]),
                                   T.Broadcast(T.int32(8), 4)))
            elif SHIFTED:
                acc32[T.Ramp(c * 4, 1, 4)] = acc32[T.Ramp(c * 4, 1, 4)] + T.shift_left(
                    T.Cast("int32x4", acc_hi[T.Ramp(c * 4, 1, 4)]),
                    T.Broadcast(SHf[r * KT + kt], 4))
            else:
                acc32[T.Ramp(c * 4, 1, 4)] = acc32[T.Ramp(c * 4, 1, 4)] + \
                    T.Cast("int32x4", acc_hi[T.Ramp(c * 4, 1, 4)])

    @T.macro
    def store(Of, y, r, nt):
        cols: T.let[T.int32] = N - nt * TN
        if cols >= TN:
            for c in T.unroll(8):
                Of[T.Ramp(r * N + nt * TN + c * 4, 1, 4)] = y[T.Ramp(c * 4, 1, 4)]
        else:
            for c in range(cols):
                Of[r * N + nt * TN + c] = y[c]

    def fence(x):
        return T.call_llvm_pure_intrin("float32x4", FENCE, x)

    return lookup_prim_func(
        float_acts=float_acts, has_zp=has_zp, lanes=4, w_shape=(NT, KT, TK4, B, 16),
        k_tile=k_tile, store=store, fence=fence, KT=KT, TK2=TK2, NB=NB, NT=NT, NG=NG, GK=GK,
        N=N, ZC0=ZC0, PAR=PAR).with_attr("global_symbol", name)


# ---------------------------------------------------------------- the Relax rewrite

def schedule_lut_matmuls(mod: Any, tvm_target: Any) -> Any:
    """Replace the generic LutMatMul calls of a Relax module by the NEON kernels (the caller
    checks that the target is aarch64): the rewrite of
    :func:`edgert.ops.lut_matmul.tvm_rewrite.rewrite_lut_matmuls` with this module's kernels
    (any ``tile_n``: the re-pack makes its own 32-column tiles)."""
    return rewrite_lut_matmuls(mod, tvm_target, LutKernels(
        "arm", table_kernel, lookup_kernel, LutOperands, lambda layout: True))
