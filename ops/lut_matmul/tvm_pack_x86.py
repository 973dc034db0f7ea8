"""The x86 LutMatMul kernels' compile-time operands: weight, scale and zero-term re-packs (numpy).

Weight words (:func:`repack_weight`), uint8 ``[NT, K/tile_k, TK2, NV, 32]`` for ymm registers:
lane ``l`` = 4-group ``2*fi2 + l`` of the K tile (``TK2 = ceil(tile_k / 8)`` pairs, an odd last
4-group padded with zero nibbles); byte ``2j + e`` of a lane holds, for a *plane pair*
``(2p, 2p+1)``, the nibble of plane ``2p + e`` of column ``16v + j`` (low nibble) and of column
``16v + 8 + j`` (high nibble), ``v`` in {0, 1} (two words per pair); for the last plane of an
odd bit count, the nibble of that plane of column ``8e + j`` (low) and ``16 + 8e + j`` (high)
in one word (``NV = 2 * (bits // 2) + bits % 2`` words per 4-group pair).
VNNI words (:func:`repack_weight_vnni`, 4-bit weights): a dword holds one column's four planes.
zmm words (:func:`repack_weight_zmm`, AVX-512BW): the ymm words of two consecutive 4-group pairs
side by side, ``[NT, KT, TK2 / 2, NV, 2, 32]``, so that one 64-byte load holds four 4-groups.
Per-(group, column) values (scales, zero terms) become ``[NT, NG, 32]`` (:func:`repack_columns`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgert.ops.lut_matmul.layout import G, LutLayout
from edgert.ops.lut_matmul.spec import half_exact, plane_nibbles, zero_constant

TN = 32                 # columns per tile (one tile: 4 int32 ymm accumulators)
VNNI_MIN_ROWS = 8
"""Activation rows from which a 4-bit LutMatMul gets the VNNI kernel. From DRAM at one row (LLM
decode) the ``vpmaddubsw`` kernel was the faster one, though the VNNI one is faster from
cache: 4096x4096, kernel alone, one / two threads, 301 vs 321 us / 237 vs 244 us; at 8 rows
VNNI won, 1702 vs 1817 us / 904 vs 942 us; at 4 rows a tie."""


def geometry(layout: LutLayout) -> tuple[int, int, int, int, int, int]:
    """``(KT, TK4, TK2, NP, ODD, NV)``: K tiles, 4-groups per tile, 4-group pairs per tile,
    plane pairs, an odd last plane (0/1), ymm words per 4-group pair."""
    kt, tk4 = layout.K // layout.tile_k, layout.tile_k // G
    tk2 = (tk4 + 1) // 2
    np_, odd = layout.bits // 2, layout.bits % 2
    return kt, tk4, tk2, np_, odd, 2 * np_ + odd


def _paired_nibbles(planes: np.ndarray, layout: LutLayout) -> np.ndarray:
    """Every (plane, 4-group, column) nibble as uint8 ``[NT, KT, TK2, 2, B, 32]``: tile, K tile,
    4-group pair, 4-group of the pair, plane, column of the tile (zero for the padded 4-group
    of an odd count and the padded columns)."""
    if layout.tile_n != TN:
        raise ValueError(f"the x86 LutMatMul kernel needs tile_n = {TN}, got {layout.tile_n}")
    kt, tk4, tk2, _, _, _ = geometry(layout)
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
    kt, _, tk2, np_, odd, nv = geometry(layout)
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
    kt, _, tk2, _, _, _ = geometry(layout)
    nt = layout.n_tiles
    col = (16 * np.arange(2)[:, None, None] + 4 * np.arange(2)[None, :, None]
           + np.arange(4)[None, None, :])                                  # [j, L, d]
    out = nib[..., col, :] | (nib[..., col + 8, :] << 4)                   # [..,g,j,L,d,e]
    return np.ascontiguousarray(out.reshape(nt, kt, tk2, 4, 32))


def repack_weight_zmm(planes: np.ndarray, layout: LutLayout) -> np.ndarray:
    """The layout-v1 packed weight re-packed for the zmm lookups: uint8 ``[NT, KT, TK2, NV,
    32]`` in memory order ``[NT, KT, TK2 / 2, NV, 2, 32]``: word ``v`` of step ``s`` is the ymm
    word ``v`` of 4-group pair ``2s`` (bytes 0-31) then of pair ``2s + 1`` (bytes 32-63)."""
    if not uses_zmm(layout):
        raise ValueError(f"the zmm lookups need an even count of 4-group pairs: {layout}")
    w = repack_weight(planes, layout)
    nt, kt, tk2, nv, _ = w.shape
    steps = w.reshape(nt, kt, tk2 // 2, 2, nv, 32).transpose(0, 1, 2, 4, 3, 5)
    return np.ascontiguousarray(steps.reshape(nt, kt, tk2, nv, 32))


def uses_zmm(layout: LutLayout) -> bool:
    """Whether the zmm lookups (AVX-512BW) serve ``layout``: 32-column tiles and an even
    count of 4-group pairs per K tile (a step takes two)."""
    return layout.tile_n == TN and geometry(layout)[2] % 2 == 0


def uses_vnni(layout: LutLayout, vnni: bool) -> bool:
    """Whether the VNNI lookup kernel serves ``layout`` on a target with AVX-512 VNNI (4-bit
    weights: a dword holds one column's four planes; fewer bits would waste lookups)."""
    return vnni and layout.bits == 4 and layout.tile_n == TN


def lookup_span(layout: LutLayout, float_acts: bool, vnni: bool) -> int:
    """K tiles whose lookups the x86 kernel sums before widening them into int32: 1 for int8
    activations (int16 tables, per-tile shifts); for float32 activations (int8 tables, |q| <=
    127) the most K tiles of a weight group that keep every int16 sum in range: a lookup
    merged over plane pair ``p`` adds at most ``127 * 3 * 4**p`` (the odd plane ``127 *
    2**(b-1)``), ``ceil(tile_k / 8)`` of them per K tile and lane; at 1 bit the biased
    lookups of a span's ``2 * ceil(tile_k / 8)`` 4-groups a K tile add at most 255 each to
    an unsigned 16-bit sum of the two lanes. The VNNI kernel adds into
    int32 and spans the whole group. At group 128 every width spans both K tiles: half the
    widening."""
    gk = layout.group_size // layout.tile_k
    if not float_acts:
        return 1
    if vnni:
        return gk
    _, _, tk2, np_, odd, _ = geometry(layout)
    if layout.bits == 1:            # biased lookups (u = q + 128 <= 255), lanes added in uint16
        return max(s for s in range(1, gk + 1) if gk % s == 0 and 2 * s * tk2 * 255 < 2**16)
    most = 127 * max(3 * 4 ** (np_ - 1) if np_ else 0, 2 ** (layout.bits - 1) if odd else 0)
    return max(s for s in range(1, gk + 1) if gk % s == 0 and s * tk2 * most < 2**15)


def repack_columns(values: np.ndarray, layout: LutLayout, dtype: str) -> np.ndarray:
    """Per (group, column) values [NG, N] -> ``[NT, NG, 32]`` of ``dtype`` (zero padded)."""
    nt, ng = layout.n_tiles, layout.n_groups
    out = np.zeros((ng, nt * TN), dtype)
    out[:, :layout.N] = values
    return np.ascontiguousarray(out.reshape(ng, nt, TN).transpose(1, 0, 2))


class LutOperands:
    """Compile-time operands of one LutMatMul for the kernels (numpy). ``half_scales`` (float
    activations; scales that are float16 numbers, :func:`~edgert.ops.lut_matmul.spec.half_exact`):
    the group scales are stored as float16, for a kernel built with ``half_scales``."""

    def __init__(self, layout: LutLayout, planes: np.ndarray, scales: np.ndarray | None,
                 zero_points: np.ndarray | None, float_acts: bool, vnni: bool = False,
                 zmm: bool = False, half_scales: bool = False) -> None:
        self.layout = layout
        repack = (repack_weight_vnni if uses_vnni(layout, vnni)
                  else repack_weight_zmm if zmm else repack_weight)
        self.w2 = repack(planes, layout)
        self.has_zp = zero_points is not None
        zc = zero_constant(layout, zero_points)
        if half_scales and not (float_acts and half_exact(scales)):
            raise ValueError("half_scales needs float activations and float16-exact scales")
        self.half_scales = half_scales
        if float_acts:
            self.scales = repack_columns(scales, layout,
                                         "float16" if self.half_scales else "float32")
            self.zc = repack_columns(zc.astype(np.float32), layout, "float32")
        else:
            self.scales = None
            self.zc = repack_columns(zc, layout, "int32")


def wants_vnni(layout: LutLayout, rows: Any) -> bool:
    """Whether a call with ``rows`` activation rows (a PrimExpr) takes the VNNI kernel on a
    VNNI target: 4-bit weights and a static row count of at least :data:`VNNI_MIN_ROWS`
    (symbolic rows are an LLM's tokens: one at a time while it generates)."""
    from tvm import tirx
    from tvm.sym.analyzer import Analyzer

    rows = Analyzer().simplify(rows)
    return (uses_vnni(layout, True) and isinstance(rows, tirx.IntImm)
            and int(rows.value) >= VNNI_MIN_ROWS)

