"""``LutMatMul``: low-bit weight x activation matmul by table lookup (T-MAC), no dequantization.

Method: T-MAC (Wei et al., "T-MAC: CPU Renaissance via Table Lookup for Low-Bit LLM
Deployment on Edge", EuroSys 2025), with an integer-only variant of our own. Weights are b-bit
codes ``u`` (b in 1..4) quantized per (group of ``group_size`` rows of K, column) by
:mod:`edgert.compiler.weightquant`; this op only ever sees them as packed bit planes
(:mod:`edgert.ops.lut_matmul.layout`) plus scales and optional zero points.

Code convention (one formula for every scheme; ``z2 = 2 * z`` is the doubled zero point):
    w[k, n] = s[g, n] * (u[k, n] - z)          g = k // group_size
    symmetric (no zero-point input):  z = 2**(b-1) for b >= 2 (T-MAC), z = 1/2 for b = 1
                                      (so 1-bit weights are +-s/2), i.e. z2 = 2**b or 1
    asymmetric: z = zero_points[g, n], an integer code in [0, 2**b)   (z2 = 2 * z)
    exact-min (float32 A only): z = zero_points[g, n] a float32, any real offset: with
                z = -min / s the weight is ``min + s * u`` (GGUF Q4_1's form), and zc below
                is a float32
    ternary (BitNet b1.58): b = 2, u = t + 2 in {1, 2, 3}, symmetric (z = 2)
With bit planes ``u = sum_i 2**i * bit_i`` and ``sigma_i = 2 * bit_i - 1`` (a +-1 weight):
    2 * (u - z) = sum_i 2**i * sigma_i + zc,      zc = 2**b - 1 - z2     (an integer)
so ``x . w = s/2 * (sum_i 2**i * (x . sigma_i) + zc * sum(x))``: b one-bit dot products, each
done by table lookup, plus a per-row constant (``zc = -1`` symmetric b >= 2, ``0`` for b = 1).

Tables (g = 4): for each 4-group f of K, ``T_f[idx] = sum_j (bit j of idx ? +x_j : -x_j)``,
computed as ``((t0 + t1) + t2) + t3`` (t_j = +-x_j, this order on every backend) for idx < 8
only; ``T_f[15 - idx] = -T_f[idx]`` (mirror). A nibble of 4 weight bits of one column and one
plane indexes the table: ``x[4f:4f+4] . sigma_i[4f:4f+4, n] = T_f[nibble_i(f, n)]``.

Variants (chosen by the activation dtype):

float32 activations ``a`` [..., M, K] -> float32 [..., M, N]  (``table_bits = 8``):
    table scale ts[m, g] = max_{f in g} (((|x0| + |x1|) + |x2|) + |x3|) / 127    (float32)
    q_f[idx] = clip(round_half_even(T_f[idx] / ts), -127, 127) as int8  (0 where ts == 0);
    symmetric rounding keeps the mirror exactly.
    A[m, g, n] = sum_i 2**i * sum_{f in g} q_f[nibble_i(f, n)]     (exact integer)
    r[m, g] = sum_{f in g} T_f[15]          (float32 sum of the unquantized x, f in order)
    y[m, n] = sum_g (sequentially) s[g, n] * ((ts[m, g] * A + zc[g, n] * r[m, g]) * 0.5)
    Error against ``x @ dequant(W)``: table rounding only (|q - T/ts| <= 1/2), see the tests.

int8 activations ``a`` [..., M, K] (one scale s_x over all of K) -> int32 [..., M, N]:
    acc[m, n] = sum_i 2**i * sum_f L_i(f, n) + sum_g zc[g, n] * sum_{k in g} x[m, k]
    an integer at scale ``s_x * s[n] / 2``; the weight scales are not an input: the compiler
    folds them (one per column, equal across groups) into the following ``Requant``.
    ``table_bits = 16``: L = T_f[nibble] exactly (|T| <= 512: int16 tables; SIMD kernels do two
    byte-plane lookups, low byte unsigned + high byte signed). acc equals
    ``IntMatMul(x, 2 * (u - z))`` bit for bit.
    ``table_bits = 8``: int8 tables with a power-of-two scale per (row, K tile of ``tile_k``):
    sh = #{127, 254, 508 below max_{f in tile} sum_j |x_j|} in [0, 3], entries
    ``q = round_half_even(T / 2**sh)`` (|q| <= 127, mirror kept), lookups widened back by
    ``<< sh``. Exact (sh = 0) whenever no 4-group of the tile has sum |x| > 127.
    Every quantity is an integer: numpy, numba and TVM agree bit for bit.

Kernel attribute ``dequant`` (0 by default): with ``dequant = 1`` the same operands are
multiplied by dequantization instead of table lookup (``--lut never``, or ``--lut auto`` where it
timed faster, :mod:`edgert.compiler.kernel_choice`):
    float32 A: y = A @ Wd,  Wd[k, n] = s[g, n] * ((2u - z2) * 0.5)   (:func:`dequantized_weight`,
               float32; ``z2 = 2 * z``, :func:`doubled_zero`). The reference sums in float64 and
               rounds once; kernels sum in float32 in any order (and may form Wd as
               ``fma(u, s, -s * z)``): within ``(K + 4) * 2**-24 * (|A| @ (|s| * (u + |z|)))``
               of the reference (:func:`dequant_error_bound`, asserted in the tests). No table
               rounding: this is the exact dequantized matmul, more accurate than the tables.
    int8 A:    acc = A @ (2u - z2) exactly, as int32: equal to the ``table_bits = 16`` result
               bit for bit (and to ``table_bits = 8`` wherever its shift is 0).

Lookups are summed per (plane, K tile) over at most 16 nibbles (``tile_k <= 64``) in int16
(|sum| <= 16 * 512 fits), then widened to int32; an exact integer sum, as the reference writes.

CPU kernels: :mod:`edgert.ops.lut_matmul.tvm_x86` (AVX2 ``vpshufb``) and
:mod:`edgert.ops.lut_matmul.tvm_arm` (NEON ``tbl``) replace the generic TE compute
(:func:`edgert.ops.lut_matmul.tvm.te_compute`) in compiled artifacts, bit-exact with
:func:`reference` for both variants.

Packed weights: :mod:`edgert.ops.lut_matmul.layout` (byte order, :class:`LutLayout`).

ONNX (domain ``edgert``): ``LutMatMul(A: float|int8, W: uint8, scales?: float,
zero_points?: uint8|float) -> float|int32`` with INT attributes ``bits, g, group_size, K, N, tile_n,
tile_k, layout_version, table_bits`` and the optional ``dequant`` (0 or 1, default 0);
``scales`` [K/group_size, N] is required for float A and absent for int8 A; ``zero_points``
[K/group_size, N] selects the asymmetric scheme (float32 zero points, float A only: the
exact-min scheme).
"""

from __future__ import annotations

import numpy as np

from edgert.ops.lut_matmul.layout import (
    G, INT8_SHIFT_LIMITS, INT32_MAX, LAYOUT_VERSION, MAX_TILE_K, OP_TYPE, LutLayout,
    check_operands, table_bits_for)
from edgert.ops._common.op import Example

__all__ = ["G", "INT32_MAX", "LAYOUT_VERSION", "MAX_TILE_K", "OP_TYPE", "LutLayout",
           "accumulator_bound", "check_operands", "codes", "dequant_error_bound",
           "dequantize_codes", "dequantized_weight", "doubled_weight", "doubled_zero", "example",
           "int8_table_shift", "plane_nibbles", "quantize_float_tables", "reference",
           "shift_round_half_even", "table_bits_for", "tables", "zero_constant"]


# ---------------------------------------------------------------- weights (numpy)

def zero_constant(layout: LutLayout, zero_points: np.ndarray | None) -> np.ndarray:
    """``zc = 2**b - 1 - 2*z`` per (group, column), int32 [K/group_size, N] (float32 for
    float32 zero points)."""
    b = layout.bits
    if zero_points is None:
        z2 = (1 << b) if b >= 2 else 1
        return np.full((layout.n_groups, layout.N), (1 << b) - 1 - z2, np.int32)
    if zero_points.dtype == np.float32:
        return (np.float32((1 << b) - 1) - np.float32(2) * zero_points).astype(np.float32)
    return ((1 << b) - 1 - 2 * zero_points.astype(np.int32)).astype(np.int32)


def half_exact(values: np.ndarray) -> bool:
    """Whether float32 ``values`` are all float16 numbers (zero or normal: converting them to
    float16 and back changes nothing)."""
    v = np.asarray(values, np.float32)
    mag = np.abs(v)
    return bool(np.isfinite(v).all() and ((mag == 0) | ((mag >= 2.0**-14) & (mag <= 65504))).all()
                and (v.astype(np.float16).astype(np.float32) == v).all())


def half_scales(scales: np.ndarray) -> np.ndarray:
    """Float32 group scales rounded to the nearest float16 numbers (still float32), which the
    x86 kernels store in half the bytes; unchanged when a rounded scale would fall outside
    float16's normal range (a subnormal or an overflow would lose more than rounding)."""
    rounded = np.asarray(scales, np.float32).astype(np.float16).astype(np.float32)
    return rounded if half_exact(rounded) else np.asarray(scales, np.float32)


def plane_nibbles(planes: np.ndarray, layout: LutLayout) -> np.ndarray:
    """Unpack the packed weight into nibbles, uint8 [bits, K/4, N] (``nibble_i(f, n)``)."""
    nt, kt, b, tk4, tn2 = layout.planes_shape
    nib = np.stack([planes & 15, planes >> 4], axis=4)          # [nt, kt, b, tk4, 2, tn2]
    nib = nib.transpose(2, 1, 3, 0, 4, 5).reshape(b, kt * tk4, nt * 2 * tn2)
    return np.ascontiguousarray(nib[:, :, :layout.N])


def codes(planes: np.ndarray, layout: LutLayout) -> np.ndarray:
    """The weight codes ``u``, uint8 [K, N], from the packed bit planes."""
    nib = plane_nibbles(planes, layout)                                   # [b, K/4, N]
    bits = (nib[:, :, None, :] >> np.arange(G, dtype=np.uint8)[None, None, :, None]) & 1
    u = np.zeros(bits.shape[1:], np.uint8)
    for i in range(layout.bits):
        u |= bits[i] << np.uint8(i)
    return u.reshape(layout.K, layout.N)


def doubled_zero(zero_points: np.ndarray | None, bits: int, shape: tuple[int, int]
                 ) -> np.ndarray:
    """``z2 = 2 * z`` per (group, column), int16 of ``shape`` [K / group_size, N] (float32 for
    float32 zero points; symmetric: ``2**b``, or 1 for 1-bit weights)."""
    if zero_points is not None and zero_points.dtype == np.float32:
        return np.float32(2) * zero_points
    if zero_points is not None:
        return 2 * np.asarray(zero_points, np.int16)
    return np.full(shape, (1 << bits) if bits >= 2 else 1, np.int16)


def doubled_weight(u: np.ndarray, zero_points: np.ndarray | None, bits: int) -> np.ndarray:
    """``2u - z2`` [K, N] from codes ``u`` [K, N]: int16, or float32 for float32 zero points
    (one rounding). ``zero_points`` (or the symmetric constant) is per (group, column)."""
    k, n = u.shape
    z2 = doubled_zero(zero_points, bits, (1, n))            # (1, n): the symmetric constant
    z2 = np.repeat(z2, k // z2.shape[0], axis=0)
    if z2.dtype == np.float32:
        return (np.float32(2) * u.astype(np.float32)) - z2
    return 2 * u.astype(np.int16) - z2


def dequantize_codes(u: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None,
                     bits: int) -> np.ndarray:
    """float32 [K, N] ``s[g, n] * ((2u - z2) * 0.5)`` from codes ``u`` [K, N] and per-group
    scales / zero points."""
    two = doubled_weight(u, zero_points, bits)
    s = np.repeat(np.asarray(scales, np.float32), u.shape[0] // scales.shape[0], axis=0)
    return (s * (two.astype(np.float32) * np.float32(0.5))).astype(np.float32)


def dequantized_weight(planes: np.ndarray, scales: np.ndarray,
                       zero_points: np.ndarray | None, layout: LutLayout) -> np.ndarray:
    """The weight a float LutMatMul stands for (``dequant = 1`` multiplies by exactly this):
    :func:`dequantize_codes` of the packed codes."""
    return dequantize_codes(codes(planes, layout), scales, zero_points, layout.bits)


def dequant_error_bound(a: np.ndarray, planes: np.ndarray, scales: np.ndarray,
                        zero_points: np.ndarray | None, layout: LutLayout) -> np.ndarray:
    """Per output element, float64 [..., M, N]: how far a float32 ``dequant = 1`` kernel may
    be from :func:`reference`: ``(K + 4) * 2**-24 * (|A| @ (|s| * (u + |z|)))`` (a float32
    sum of K products in any order, the weight formed with up to two roundings)."""
    u = codes(planes, layout).astype(np.float64)
    z = np.abs(doubled_zero(zero_points, layout.bits, (layout.n_groups, layout.N))
               .astype(np.float64)) / 2
    mag = np.repeat(np.abs(scales.astype(np.float64)), layout.group_size, axis=0) * (
        u + np.repeat(z, layout.group_size, axis=0))
    return (layout.K + 4) * 2.0 ** -24 * (np.abs(a.astype(np.float64)) @ mag)


# ---------------------------------------------------------------- tables (numpy)

def _signs() -> np.ndarray:
    """[8, 4] bool: bit j of idx for idx < 8 (bit 3 is always 0: -x3)."""
    return ((np.arange(8)[:, None] >> np.arange(G)[None, :]) & 1).astype(bool)


def tables(x4: np.ndarray) -> np.ndarray:
    """The 16-entry tables of 4-groups ``x4`` [..., 4] (float32 or int32) -> [..., 16].

    Entries idx < 8 are ``((t0 + t1) + t2) + t3`` with ``t_j = +-x_j``; the rest mirror:
    ``T[15 - idx] = -T[idx]``."""
    s = _signs()
    x = x4[..., None, :]                                         # [..., 1, 4]
    t = np.where(s, x, -x)                                       # [..., 8, 4]
    half = ((t[..., 0] + t[..., 1]) + t[..., 2]) + t[..., 3]
    return np.concatenate([half, -half[..., ::-1]], axis=-1)


def _abs_sums(x4: np.ndarray) -> np.ndarray:
    a = np.abs(x4)
    return ((a[..., 0] + a[..., 1]) + a[..., 2]) + a[..., 3]


def quantize_float_tables(x4: np.ndarray, group_fours: int) -> tuple[np.ndarray, np.ndarray]:
    """int8 tables and their float32 scales for float32 4-groups ``x4`` [R, F, 4].

    Returns:
        ``(q int8 [R, F, 16], ts float32 [R, F / group_fours])``: one scale per weight group.
    """
    r, f = x4.shape[:2]
    t = tables(x4)
    mx = _abs_sums(x4).reshape(r, f // group_fours, group_fours).max(axis=2)
    ts = (mx / np.float32(127)).astype(np.float32)
    safe = np.where(ts > 0, ts, np.float32(1)).astype(np.float32)
    q = np.rint(t / np.repeat(safe, group_fours, axis=1)[..., None])
    return np.clip(q, -127, 127).astype(np.int8), ts


def int8_table_shift(x4: np.ndarray, tile_fours: int) -> np.ndarray:
    """Power-of-two table shift per (row, K tile), int32 [R, F / tile_fours], in [0, 3]."""
    r, f = x4.shape[:2]
    mx = _abs_sums(x4.astype(np.int32)).reshape(r, f // tile_fours, tile_fours).max(axis=2)
    return sum((mx > lim).astype(np.int32) for lim in INT8_SHIFT_LIMITS)


def shift_round_half_even(t: np.ndarray, sh: np.ndarray) -> np.ndarray:
    """``round_half_even(t / 2**sh)`` in integers (int32 in and out, ``sh >= 0``)."""
    t, sh = np.asarray(t, np.int32), np.asarray(sh, np.int32)
    half = np.left_shift(1, np.maximum(sh - 1, 0))
    q = (t + half - 1 + ((t >> sh) & 1)) >> sh
    return np.where(sh == 0, t, q).astype(np.int32)


# ---------------------------------------------------------------- reference

def _lookup_sums(q: np.ndarray, nib: np.ndarray, fours: int) -> np.ndarray:
    """``sum_i 2**i * sum_{f in block} q[r, f, nib[i, f, n]]`` per block of ``fours`` 4-groups:
    int64 [R, F / fours, N]."""
    r, f, _ = q.shape
    rows_f = np.arange(f)[:, None]
    out = np.zeros((r, f // fours, nib.shape[2]), np.int64)
    for i in range(nib.shape[0]):
        look = q[:, rows_f, nib[i]].astype(np.int64)                     # [R, F, N]
        out += look.reshape(r, f // fours, fours, -1).sum(axis=2) << i
    return out


def reference(a: np.ndarray, planes: np.ndarray, scales: np.ndarray | None = None,
              zero_points: np.ndarray | None = None, *, layout: LutLayout,
              table_bits: int | None = None, dequant: bool = False) -> np.ndarray:
    """Normative numpy LutMatMul (see the module docstring).

    Args:
        a: float32 or int8 activations [..., M, K].
        planes: uint8 packed weight (``layout.planes_shape``).
        scales: float32 [K/group_size, N] (float32 activations only).
        zero_points: uint8 [K/group_size, N], float32 (float32 ``a`` only) or None
            (symmetric).
        table_bits: 8 or 16 for int8 activations (default 16), 8 (default) for float32.
        dequant: multiply by the dequantized weight instead of table lookup (the ``dequant``
            attribute; ``table_bits`` is then unused).

    Returns:
        float32 [..., M, N] (float32 activations) or int32 [..., M, N] at scale s_x*s[n]/2.
    """
    a, planes = np.asarray(a), np.asarray(planes)
    check_operands(layout, a, planes, scales, zero_points)
    tb = table_bits_for(a.dtype, table_bits)
    if dequant:
        out = _reference_dequant(a.reshape(-1, layout.K), planes, scales, zero_points, layout)
    elif a.dtype == np.float32:
        out = _reference_float(a.reshape(-1, layout.K // G, G), planes, scales, zero_points,
                               layout)
    else:
        out = _reference_int(a.reshape(-1, layout.K // G, G), planes, zero_points, layout, tb)
    return out.reshape(*a.shape[:-1], layout.N)


def _reference_dequant(a2: np.ndarray, planes: np.ndarray, scales: np.ndarray | None,
                       zero_points: np.ndarray | None, layout: LutLayout) -> np.ndarray:
    """``dequant = 1``: ``a2`` [R, K] times the dequantized weight, float64 sum rounded once
    (float32 [R, N]), or the exact int32 ``a2 @ (2u - z2)`` for int8 ``a2``."""
    if a2.dtype == np.float32:
        w = dequantized_weight(planes, scales, zero_points, layout)
        return (a2.astype(np.float64) @ w.astype(np.float64)).astype(np.float32)
    two = doubled_weight(codes(planes, layout), zero_points, layout.bits)
    return _int32_checked(a2.astype(np.int64) @ two.astype(np.int64))


def _reference_float(x4: np.ndarray, planes: np.ndarray, scales: np.ndarray,
                     zero_points: np.ndarray | None, layout: LutLayout) -> np.ndarray:
    """float32 4-groups ``x4`` [R, K/4, 4] -> float32 [R, N]: int8 tables with one scale per
    weight group, exact integer lookup sums, the float epilogue in the documented order."""
    nib = plane_nibbles(planes, layout)
    zc = zero_constant(layout, zero_points)
    gf = layout.group_size // G
    q, ts = quantize_float_tables(x4, gf)
    acc = _lookup_sums(q, nib, gf).astype(np.float32)                     # [R, NG, N]
    t15 = tables(x4)[..., 15]                                             # sum x per 4-group
    out = np.zeros((x4.shape[0], layout.N), np.float32)
    for g in range(layout.n_groups):
        rs = np.zeros(x4.shape[0], np.float32)
        for f in range(g * gf, (g + 1) * gf):
            rs = rs + t15[:, f]
        inner = (ts[:, g:g + 1] * acc[:, g, :] + zc[g].astype(np.float32) * rs[:, None])
        out = out + scales[g] * (inner * np.float32(0.5))
    return out


def _reference_int(x4: np.ndarray, planes: np.ndarray, zero_points: np.ndarray | None,
                   layout: LutLayout, table_bits: int) -> np.ndarray:
    """int8 4-groups ``x4`` [R, K/4, 4] -> int32 [R, N]: exact int16 tables
    (``table_bits = 16``) or int8 tables shifted per K tile (8), plus the zero term."""
    nib = plane_nibbles(planes, layout)
    zc = zero_constant(layout, zero_points)
    x4i = x4.astype(np.int32)
    t = tables(x4i)
    tf = layout.tile_k // G
    if table_bits == 8:
        sh = int8_table_shift(x4i, tf)
        q = shift_round_half_even(t, np.repeat(sh, tf, axis=1)[..., None])
        per_tile = _lookup_sums(q, nib, tf) << sh[..., None].astype(np.int64)
        acc = per_tile.sum(axis=1)
    else:
        acc = _lookup_sums(t, nib, layout.K // G)[:, 0]
    rowsum = x4i.astype(np.int64).reshape(x4.shape[0], layout.n_groups, -1).sum(axis=2)
    return _int32_checked(acc + rowsum @ zc.astype(np.int64))


def _int32_checked(acc: np.ndarray) -> np.ndarray:
    if acc.size and np.abs(acc).max() > INT32_MAX:
        raise OverflowError("LutMatMul: accumulator exceeds int32 (the compile-time bound failed)")
    return acc.astype(np.int32)


def accumulator_bound(layout: LutLayout, a_max: int = 128, table_bits: int = 16) -> int:
    """A bound on ``|acc|`` of the integer variant for ``|x| <= a_max`` (a Python int).

    ``|2 * (u - z)| <= 2 * (2**b - 1)`` for every scheme, so exact tables give
    ``a_max * K * 2 * (2**b - 1)``; int8 tables add at most ``2**(sh-1) <= 4`` per lookup,
    i.e. ``(2**b - 1) * K`` in all. The compiler checks it against int32 (the reference also
    checks the values at run time)."""
    top = (1 << layout.bits) - 1
    return layout.K * top * (2 * a_max + (1 if table_bits == 8 else 0))



def example(rng: np.random.Generator) -> Example:
    """A small integer case, bit-exact on every backend: int8 activations [2, 3, 128], 2-bit
    weights K = 128, N = 32 (random packed bytes), asymmetric uint8 zero points per group of
    64, int16 tables (``table_bits = 16``)."""
    layout = LutLayout(bits=2, group_size=64, K=128, N=32, tile_n=32, tile_k=32)
    a = rng.integers(-128, 128, (2, 3, layout.K)).astype(np.int8)
    planes = rng.integers(0, 256, layout.planes_shape).astype(np.uint8)
    zero_points = rng.integers(0, 1 << layout.bits, (layout.n_groups, layout.N)).astype(np.uint8)
    return Example((a, planes, None, zero_points), {**layout.to_attrs(), "table_bits": 16})
