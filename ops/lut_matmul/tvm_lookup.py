"""The LutMatMul lookup PrimFunc shared by the x86 and the aarch64 kernels (TIR).

An ISA supplies three pieces: ``k_tile`` (a macro adding the table lookups of one or more K
tiles of one activation row and one 32-column tile into int32 accumulators), ``store`` (a macro
writing a row of the tile, masked or scalar for a ragged last tile) and ``fence`` (an
``llvm.arithmetic.fence`` of a float vector), and optionally ``k_tile2`` (the lookups of two
rows at once, float activations: x86 at 1, 2 and 4 bits). This module wraps them in the loops over column
tiles (parallel) and rows (by pairs where ``k_tile2`` is given, then the odd row left), and in
the epilogue per weight group: float activations the
reference's ``s * ((ts * acc + zc * rs) * 0.5)`` with every product fenced (no FMA
contraction: bit-exact with :func:`edgert.ops.lut_matmul.spec.reference`), int8 activations
``acc + sum_g zc * rowsum``.
"""

from __future__ import annotations

from functools import lru_cache
from types import SimpleNamespace
from typing import Any

import numpy as np

from edgert.ops.lut_matmul.tvm_pack_x86 import TN


@lru_cache(maxsize=None)
def lookup_prim_func(*, float_acts: bool, has_zp: bool, lanes: int, w_shape: tuple[int, ...],
                     k_tile: Any, store: Any, fence: Any, KT: int, TK2: int, NB: int, NT: int,
                     NG: int, GK: int, N: int, ZC0: int, PAR: bool, span: int = 1,
                     scale_dtype: str = "float32", k_tile2: Any = None) -> Any:
    """The lookup PrimFunc around an ISA's macros, shared by the x86 and the aarch64 kernels:
    per column tile ``nt`` (parallel when ``PAR``) and row ``r``, ``k_tile(..., kt, ...)`` adds
    the lookups of K tiles ``kt .. kt + span - 1`` (float activations; one K tile for int8)
    into ``TN`` int32 accumulators; the group epilogue (float: the reference's fenced
    ``s * (ts * acc + zc * rs) / 2`` per weight group; int: ``acc + zc * rs``) runs on vectors
    of ``lanes``; ``store`` writes a row of the tile. ``scale_dtype``: the stored group scales,
    float32 or float16 (scales that are float16 values, widened exactly before use: half the
    bytes). ``k_tile2`` (float activations, optional): the same as ``k_tile`` for two rows
    ``r`` and ``r + 1`` at once, into ``2 * TN`` accumulators (row ``r + 1`` from ``TN``):
    rows then go by pairs, each weight word loaded once for both. Signatures: see
    :func:`edgert.ops.lut_matmul.tvm_x86.lookup_kernel`."""
    from tvm.script import tirx as T

    p = SimpleNamespace(has_zp=has_zp, L=lanes, V=TN // lanes, FVEC=f"float32x{lanes}",
                        W_SHAPE=w_shape, W_SIZE=int(np.prod(w_shape)), k_tile=k_tile,
                        store=store, fence=fence, KT=KT, TK2=TK2, NB=NB, NT=NT, NG=NG, GK=GK,
                        N=N, ZC0=ZC0, PAR=PAR, span=span, SD=scale_dtype, k_tile2=k_tile2)
    return _float_lookup_func(T, p) if float_acts else _int_lookup_func(T, p)


def _float_rows(T: Any, p: SimpleNamespace) -> tuple[Any, Any]:
    """Macros ``one_row`` and ``two_rows`` ``(nt, r, Qf, TSf, RSf, Wf, Sf, ZCf, Of)``: the
    lookups and the fenced group epilogue of row ``r`` (and ``r + 1``) over column tile
    ``nt``, stored (``two_rows`` needs ``p.k_tile2``)."""
    has_zp, L, V, FVEC = p.has_zp, p.L, p.V, p.FVEC
    k_tile, k_tile2, store, fence, span, SD = p.k_tile, p.k_tile2, p.store, p.fence, p.span, p.SD
    NG, GK, ZC0 = p.NG, p.GK, p.ZC0

    def scale(v):
        # lanes of stored group scales as float32 (float16 widens exactly)
        return v if SD == "float32" else T.Cast(FVEC, v)

    @T.macro
    def group_end(nt, r, g, acc32, a0, y, TSf, RSf, Sf, ZCf):
        # row r's weight group g: the int32 sums at acc32[a0..] into y[a0..]
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
            inner: T.let = fence(ts * T.Cast(FVEC, acc32[T.Ramp(a0 + a * L, 1, L)])) \
                + fence(zc * rs)
            y[T.Ramp(a0 + a * L, 1, L)] = y[T.Ramp(a0 + a * L, 1, L)] + fence(
                scale(Sf[T.Ramp(c0, 1, L)]) * (inner * T.Broadcast(T.float32(0.5), L)))

    @T.macro
    def one_row(nt, r, Qf, TSf, RSf, Wf, Sf, ZCf, Of):
        acc32 = T.alloc_buffer((TN,), "int32")
        y = T.alloc_buffer((TN,), "float32")
        for a in T.unroll(V):
            y[T.Ramp(a * L, 1, L)] = T.Broadcast(T.float32(0), L)
        for g in range(NG):
            for a in T.unroll(V):
                acc32[T.Ramp(a * L, 1, L)] = T.Broadcast(T.int32(0), L)
            for kg in range(GK // span):
                k_tile(nt, r, g * GK + kg * span, Qf, TSf, Wf, acc32)
            group_end(nt, r, g, acc32, 0, y, TSf, RSf, Sf, ZCf)
        store(Of, y, r, nt)

    @T.macro
    def two_rows(nt, r, Qf, TSf, RSf, Wf, Sf, ZCf, Of):
        acc32 = T.alloc_buffer((2 * TN,), "int32")
        y = T.alloc_buffer((2 * TN,), "float32")
        y1 = T.alloc_buffer((TN,), "float32")
        for a in T.unroll(2 * V):
            y[T.Ramp(a * L, 1, L)] = T.Broadcast(T.float32(0), L)
        for g in range(NG):
            for a in T.unroll(2 * V):
                acc32[T.Ramp(a * L, 1, L)] = T.Broadcast(T.int32(0), L)
            for kg in range(GK // span):
                k_tile2(nt, r, g * GK + kg * span, Qf, TSf, Wf, acc32)
            group_end(nt, r, g, acc32, 0, y, TSf, RSf, Sf, ZCf)
            group_end(nt, r + 1, g, acc32, TN, y, TSf, RSf, Sf, ZCf)
        store(Of, y, r, nt)
        for a in T.unroll(V):
            y1[T.Ramp(a * L, 1, L)] = y[T.Ramp(TN + a * L, 1, L)]
        store(Of, y1, r + 1, nt)

    return one_row, two_rows


def _float_lookup_func(T: Any, p: SimpleNamespace) -> Any:
    """Float32 activations: ``(QT, TS, RS, W2, S, ZC, OUT f32 [R, N])``."""
    W_SHAPE, W_SIZE, SD, PAIRED = p.W_SHAPE, p.W_SIZE, p.SD, p.k_tile2 is not None
    KT, TK2, NB, NT, NG, N, PAR = p.KT, p.TK2, p.NB, p.NT, p.NG, p.N, p.PAR
    one_row, two_rows = _float_rows(T, p)

    @T.macro
    def task(nt, R, Qf, TSf, RSf, Wf, Sf, ZCf, Of):
        if PAIRED:
            for rp in range(R // 2):
                two_rows(nt, rp * 2, Qf, TSf, RSf, Wf, Sf, ZCf, Of)
            if R % 2 == 1:
                one_row(nt, R - 1, Qf, TSf, RSf, Wf, Sf, ZCf, Of)
        else:
            for r in range(R):
                one_row(nt, r, Qf, TSf, RSf, Wf, Sf, ZCf, Of)

    @T.prim_func
    def kernel(q_h: T.handle, ts_h: T.handle, rs_h: T.handle, w_h: T.handle,
               s_h: T.handle, zc_h: T.handle, out_h: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        R = T.int64()
        Q = T.match_buffer(q_h, (R, KT, TK2, NB, 32), "int8")
        TS = T.match_buffer(ts_h, (R, NG), "float32")
        RS = T.match_buffer(rs_h, (R, NG), "float32")
        W = T.match_buffer(w_h, W_SHAPE, "uint8")
        S = T.match_buffer(s_h, (NT, NG, TN), SD)
        ZC = T.match_buffer(zc_h, (NT, NG, TN), "float32")
        OUT = T.match_buffer(out_h, (R, N), "float32")
        Qf = T.decl_buffer((R * KT * TK2 * NB * 32,), "int8", data=Q.data)
        TSf = T.decl_buffer((R * NG,), "float32", data=TS.data)
        RSf = T.decl_buffer((R * NG,), "float32", data=RS.data)
        Wf = T.decl_buffer((W_SIZE,), "uint8", data=W.data)
        Sf = T.decl_buffer((NT * NG * TN,), SD, data=S.data)
        ZCf = T.decl_buffer((NT * NG * TN,), "float32", data=ZC.data)
        Of = T.decl_buffer((R * N,), "float32", data=OUT.data)
        if PAR:
            for nt in T.parallel(NT):
                task(nt, R, Qf, TSf, RSf, Wf, Sf, ZCf, Of)
        else:
            for nt in range(NT):
                task(nt, R, Qf, TSf, RSf, Wf, Sf, ZCf, Of)
    return kernel


def _int_lookup_func(T: Any, p: SimpleNamespace) -> Any:
    """int8 activations: ``(QT, SH, RSUM, W2, ZC, OUT i32 [R, N])``."""
    has_zp, L, V, W_SHAPE, W_SIZE = p.has_zp, p.L, p.V, p.W_SHAPE, p.W_SIZE
    k_tile, store = p.k_tile, p.store
    KT, TK2, NB, NT, NG, N, ZC0, PAR = p.KT, p.TK2, p.NB, p.NT, p.NG, p.N, p.ZC0, p.PAR

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
