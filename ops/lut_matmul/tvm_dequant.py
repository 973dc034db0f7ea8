"""x86 AVX2 kernel for ``edgert.LutMatMul`` with ``dequant = 1``: dequantize, then multiply.

The alternative to table lookup that ``--lut never`` asks for and ``--lut auto`` times
(:mod:`edgert.compiler.kernel_choice`). Float32 activations only; the integer variant's
``dequant = 1`` keeps the generic TE compute (:func:`edgert.ops.lut_matmul.tvm.te_compute`).

Weight (re-packed at compile time from the layout-v1 bit planes by :func:`repack_codes`):
uint8 ``[NT, K / C, 32]``: per tile of 32 columns and block of ``C`` rows of K, byte ``j`` holds
the codes of column ``32 nt + j`` for rows ``C kc .. C kc + C - 1``, ``P`` bits each (row
``C kc + i`` in bits ``P i .. P i + P - 1``). ``P`` = 1, 2, 4, 4 for 1, 2, 3, 4-bit weights
(3-bit codes take 4 bits here: the lookup kernel's bit planes keep them at 3), ``C = 8 / P``.
Scales become ``S [NT, NG, 32]`` and the zero term ``Z = -s * z2 / 2`` (float32, same shape).

Kernel (``lut_dequant_x86_*``, parallel over column tiles): per tile, rows in blocks of
:data:`ROW_BLOCK` (then single rows), per block of ``C`` rows of K and 8 columns: one
``vpmovzxbd`` of 8 weight bytes, then per row of K ``(w >> P i) & (2**P - 1)``, ``vcvtdq2ps``,
one FMA ``u * s + Z`` (the dequantized weight), and per activation row one FMA into its
accumulator. Stores of a ragged last column tile are masked (``vmaskmov``).

Numerics: a float32 sum in K order per column, the weight formed as ``fma(u, s, Z)``: within
:func:`edgert.ops.lut_matmul.spec.dequant_error_bound` of the reference (asserted in the tests).
"""

from __future__ import annotations

from functools import lru_cache
from types import SimpleNamespace
from typing import Any

import numpy as np

from edgert.ops.lut_matmul.layout import LutLayout
from edgert.ops.lut_matmul.spec import codes, doubled_zero
from edgert.ops.lut_matmul.tvm_pack_x86 import TN, repack_columns

ROW_BLOCK = 3           # activation rows sharing one dequantized weight vector
"""3 rows x 4 column vectors = 12 ymm accumulators, + weight, scale, zero term: 16."""
CHUNK_ROWS = 128
CHUNKED_MIN_ROWS = 4
"""From this many activation rows on, a full column tile dequantizes each chunk of
:data:`CHUNK_ROWS` rows of K once into a float32 buffer that every row block then reads."""


def chunk_rows(k: int, c: int) -> int:
    """Rows of K dequantized at a time for many activation rows: the largest of 128, 64, ...
    that divides K and is a multiple of ``c`` (a 16 KiB float32 buffer at 128)."""
    kb = CHUNK_ROWS
    while kb > c and (k % kb or kb % c):
        kb //= 2
    return kb if k % kb == 0 and kb % c == 0 else c


def code_bits(bits: int) -> int:
    """Bits per stored code (``P``): 1, 2, 4, 4 for 1..4-bit weights."""
    return {1: 1, 2: 2, 3: 4, 4: 4}[bits]


def accepts(layout: LutLayout) -> bool:
    """Whether the kernel handles ``layout`` (K and the group size in whole code bytes)."""
    c = 8 // code_bits(layout.bits)
    return layout.K % c == 0 and layout.group_size % c == 0


def repack_codes(planes: np.ndarray, layout: LutLayout) -> np.ndarray:
    """Codes of the packed weight, uint8 ``[NT, K / C, 32]`` (module docstring)."""
    p = code_bits(layout.bits)
    c = 8 // p
    u = np.zeros((layout.K, layout.n_tiles * TN), np.uint8)
    u[:, :layout.N] = codes(planes, layout)
    u = u.reshape(layout.K // c, c, layout.n_tiles, TN)
    out = np.zeros((layout.K // c, layout.n_tiles, TN), np.uint8)
    for i in range(c):
        out |= u[:, i] << np.uint8(p * i)
    return np.ascontiguousarray(out.transpose(1, 0, 2))


def repack_scales(scales: np.ndarray, zero_points: np.ndarray | None, layout: LutLayout
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``S`` and ``Z = -s * z2 / 2`` as float32 ``[NT, NG, 32]`` (zero padded)."""
    z2 = doubled_zero(zero_points, layout.bits, (layout.n_groups, layout.N)).astype(np.float32)
    s = np.asarray(scales, np.float32)
    return (repack_columns(s, layout, "float32"),
            repack_columns(-(s * (z2 * np.float32(0.5))), layout, "float32"))


def operands(planes: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None,
             layout: LutLayout) -> list[np.ndarray]:
    """The kernel's constant operands after ``A``: ``[W, S, Z]`` (module docstring)."""
    return [repack_codes(planes, layout), *repack_scales(scales, zero_points, layout)]

@lru_cache(maxsize=None)
def dequant_kernel(layout: LutLayout, cores: int, row_block: int = ROW_BLOCK,
                   name: str = "lut_dequant_x86") -> Any:
    """PrimFunc ``(A f32 [R, K], W u8 [NT, K/C, 32], S f32 [NT, NG, 32], Z f32 [NT, NG, 32],
    OUT f32 [R, N])``, R symbolic."""
    from tvm.script import tirx as T

    P = code_bits(layout.bits)
    C = 8 // P
    p = SimpleNamespace(K=layout.K, N=layout.N, NT=layout.n_tiles, NG=layout.n_groups,
                        GS=layout.group_size, P=P, C=C, KC=layout.K // C,
                        GC=layout.group_size // C, MASK=(1 << P) - 1, PAR=cores > 1,
                        KB=chunk_rows(layout.K, C), row_block=row_block)
    blocks, single = _row_block(T, p, row_block), _row_block(T, p, 1)
    chunked = _chunked(T, p, _chunk_block(T, p, row_block), _chunk_block(T, p, 1))
    task = _task(T, p, chunked, blocks, single)
    return _dequant_func(T, p, task).with_attr("global_symbol", name)


def _row_block(T: Any, p: SimpleNamespace, rb: int) -> Any:
    """Macro ``block(nt, r0, Af, Wf, Sf, Zf, Of)``: ``rb`` activation rows x one column tile,
    each weight vector dequantized as it is used (few rows)."""
    K, N, NG, GS, P, C, KC, GC, MASK = p.K, p.N, p.NG, p.GS, p.P, p.C, p.KC, p.GC, p.MASK

    @T.macro
    def block(nt, r0, Af, Wf, Sf, Zf, Of):
        acc = T.alloc_buffer((rb * TN,), "float32")
        for i in T.unroll(rb * 4):
            acc[T.Ramp(i * 8, 1, 8)] = T.Broadcast(T.float32(0), 8)
        for g in range(NG):
            for kc in range(GC):
                w0: T.let[T.int64] = (T.Cast("int64", nt) * KC + g * GC + kc) * TN
                for a in T.unroll(4):
                    w32: T.let[T.int32x8] = T.Cast("int32x8", Wf[T.Ramp(w0 + a * 8, 1, 8)])
                    s: T.let[T.float32x8] = Sf[T.Ramp((nt * NG + g) * TN + a * 8, 1, 8)]
                    z: T.let[T.float32x8] = Zf[T.Ramp((nt * NG + g) * TN + a * 8, 1, 8)]
                    for i in T.unroll(C):
                        u: T.let[T.float32x8] = T.Cast("float32x8", T.bitwise_and(
                            T.shift_right(w32, T.Broadcast(T.int32(P * i), 8)),
                            T.Broadcast(T.int32(MASK), 8)))
                        w: T.let[T.float32x8] = u * s + z
                        k: T.let[T.int64] = T.Cast("int64", g * GS + kc * C + i)
                        for rr in T.unroll(rb):
                            acc[T.Ramp(rr * TN + a * 8, 1, 8)] = \
                                acc[T.Ramp(rr * TN + a * 8, 1, 8)] + T.Broadcast(
                                    Af[(r0 + rr) * K + k], 8) * w
        cols: T.let[T.int32] = N - nt * TN
        for rr in T.unroll(rb):
            if cols >= TN:
                for a in T.unroll(4):
                    Of[T.Ramp((r0 + rr) * N + nt * TN + a * 8, 1, 8)] = \
                        acc[T.Ramp(rr * TN + a * 8, 1, 8)]
            else:
                for a in T.unroll(4):
                    T.evaluate(T.masked_store(
                        Of, acc[T.Ramp(rr * TN + a * 8, 1, 8)],
                        T.Ramp((r0 + rr) * N + nt * TN + a * 8, 1, 8),
                        T.Ramp(0, 1, 8) < T.Broadcast(T.Cast("int32", cols) - a * 8, 8)))
    return block
    return block


def _chunk_block(T: Any, p: SimpleNamespace, rb: int) -> Any:
    """Macro ``chunk_block(nt, c, r0, Af, Wb, Of)``: ``rb`` rows x one column tile += the rows'
    activations of K chunk ``c`` times its dequantized weight ``Wb``."""
    K, N, KB = p.K, p.N, p.KB

    @T.macro
    def chunk_block(nt, c, r0, Af, Wb, Of):
        # rb rows x 32 columns += A[rows, chunk c] @ Wb (the chunk's dequantized weight)
        acc = T.alloc_buffer((rb * TN,), "float32")
        for rr in T.unroll(rb):
            for a in T.unroll(4):
                o: T.let[T.int64] = (r0 + rr) * N + nt * TN + a * 8
                if c == 0:
                    acc[T.Ramp(rr * TN + a * 8, 1, 8)] = T.Broadcast(T.float32(0), 8)
                else:
                    acc[T.Ramp(rr * TN + a * 8, 1, 8)] = Of[T.Ramp(o, 1, 8)]
        for k in range(KB):
            for rr in T.unroll(rb):
                x: T.let[T.float32x8] = T.Broadcast(Af[(r0 + rr) * K + c * KB + k], 8)
                for a in T.unroll(4):
                    acc[T.Ramp(rr * TN + a * 8, 1, 8)] = \
                        acc[T.Ramp(rr * TN + a * 8, 1, 8)] \
                        + x * Wb[T.Ramp(k * TN + a * 8, 1, 8)]
        for rr in T.unroll(rb):
            for a in T.unroll(4):
                Of[T.Ramp((r0 + rr) * N + nt * TN + a * 8, 1, 8)] = \
                    acc[T.Ramp(rr * TN + a * 8, 1, 8)]
    return chunk_block
    return chunk_block


def _chunked(T: Any, p: SimpleNamespace, chunk_blocks: Any, chunk_single: Any) -> Any:
    """Macro ``chunked(nt, R, Af, Wf, Sf, Zf, Of)``: a full column tile for many rows, each K
    chunk's weight dequantized once into a buffer."""
    K, NG, GS, P, C, KC, MASK, KB = p.K, p.NG, p.GS, p.P, p.C, p.KC, p.MASK, p.KB
    row_block = p.row_block

    @T.macro
    def chunked(nt, R, Af, Wf, Sf, Zf, Of):
        # a full column tile, many rows: each K chunk's weight dequantized once into Wb
        Wb = T.alloc_buffer((KB * TN,), "float32")
        for c in range(K // KB):
            for kc in range(KB // C):
                w0: T.let[T.int64] = (T.Cast("int64", nt) * KC + c * (KB // C) + kc) * TN
                g: T.let[T.int32] = (c * KB + kc * C) // GS
                for a in T.unroll(4):
                    w32: T.let[T.int32x8] = T.Cast("int32x8", Wf[T.Ramp(w0 + a * 8, 1, 8)])
                    s: T.let[T.float32x8] = Sf[T.Ramp((nt * NG + g) * TN + a * 8, 1, 8)]
                    z: T.let[T.float32x8] = Zf[T.Ramp((nt * NG + g) * TN + a * 8, 1, 8)]
                    for i in T.unroll(C):
                        Wb[T.Ramp((kc * C + i) * TN + a * 8, 1, 8)] = T.Cast(
                            "float32x8", T.bitwise_and(
                                T.shift_right(w32, T.Broadcast(T.int32(P * i), 8)),
                                T.Broadcast(T.int32(MASK), 8))) * s + z
            for rb in range(R // row_block):
                chunk_blocks(nt, c, rb * row_block, Af, Wb, Of)
            for r in range(R - R // row_block * row_block):
                chunk_single(nt, c, R // row_block * row_block + r, Af, Wb, Of)
    return chunked


def _task(T: Any, p: SimpleNamespace, chunked: Any, blocks: Any, single: Any) -> Any:
    """Macro ``task(nt, R, Af, Wf, Sf, Zf, Of)``: one column tile, every row."""
    N, row_block = p.N, p.row_block

    @T.macro
    def task(nt, R, Af, Wf, Sf, Zf, Of):
        if R >= CHUNKED_MIN_ROWS and N - nt * TN >= TN:
            chunked(nt, R, Af, Wf, Sf, Zf, Of)
        else:
            for rb in range(R // row_block):
                blocks(nt, rb * row_block, Af, Wf, Sf, Zf, Of)
            for r in range(R - R // row_block * row_block):
                single(nt, R // row_block * row_block + r, Af, Wf, Sf, Zf, Of)
    return task


def _dequant_func(T: Any, p: SimpleNamespace, task: Any) -> Any:
    """The PrimFunc around ``task`` (parallel over column tiles when ``PAR``)."""
    K, N, NT, NG, KC, PAR = p.K, p.N, p.NT, p.NG, p.KC, p.PAR

    @T.prim_func
    def kernel(a_h: T.handle, w_h: T.handle, s_h: T.handle, z_h: T.handle, out_h: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        R = T.int64()
        A = T.match_buffer(a_h, (R, K), "float32")
        W = T.match_buffer(w_h, (NT, KC, TN), "uint8")
        S = T.match_buffer(s_h, (NT, NG, TN), "float32")
        Z = T.match_buffer(z_h, (NT, NG, TN), "float32")
        OUT = T.match_buffer(out_h, (R, N), "float32")
        Af = T.decl_buffer((R * K,), "float32", data=A.data)
        Wf = T.decl_buffer((NT * KC * TN,), "uint8", data=W.data)
        Sf = T.decl_buffer((NT * NG * TN,), "float32", data=S.data)
        Zf = T.decl_buffer((NT * NG * TN,), "float32", data=Z.data)
        Of = T.decl_buffer((R * N,), "float32", data=OUT.data)
        if PAR:
            for nt in T.parallel(NT):
                task(nt, R, Af, Wf, Sf, Zf, Of)
        else:
            for nt in range(NT):
                task(nt, R, Af, Wf, Sf, Zf, Of)
    return kernel
