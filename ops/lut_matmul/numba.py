"""numba kernels of ``LutMatMul``: the twins of :func:`edgert.ops.lut_matmul.spec.reference`.

Same tables, same order of operations, per activation row in parallel (``prange``): bit-identical
for int8 activations, the same float32 operations in the same order for float32 activations;
``dequant = 1`` sums in float64 / int64 like the reference.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from edgert.ops.lut_matmul.layout import LutLayout, check_operands, table_bits_for
from edgert.ops.lut_matmul.spec import codes, dequantized_weight, doubled_weight, zero_constant

@njit(cache=True, inline="always")
def _row_tables(x, k4):
    """Float or int tables [k4, 16] (same order of operations as :func:`tables`)."""
    t = np.empty((k4, 16), x.dtype)
    for f in range(k4):
        for idx in range(8):
            v = x[4 * f] if idx & 1 else -x[4 * f]
            v = v + (x[4 * f + 1] if idx & 2 else -x[4 * f + 1])
            v = v + (x[4 * f + 2] if idx & 4 else -x[4 * f + 2])
            v = v + (-x[4 * f + 3])
            t[f, idx] = v
            t[f, 15 - idx] = -v
    return t


@njit(cache=True, inline="always")
def _abs_sum4(x, f):
    """((|x0| + |x1|) + |x2|) + |x3| of 4-group f (the order of :func:`_abs_sums`)."""
    return ((abs(x[4 * f]) + abs(x[4 * f + 1])) + abs(x[4 * f + 2])) + abs(x[4 * f + 3])


@njit(cache=True, inline="always")
def _lookup_tile(qt, planes, nt, kt, f0, nbits, tk4, tn2, acc16):
    """One (n tile, k tile, plane) per call: int16 sums of <= 16 lookups for tile_n columns."""
    for h in range(2 * tn2):
        acc16[h] = 0
    for fi in range(tk4):
        for h in range(tn2):
            byte = planes[nt, kt, nbits, fi, h]
            acc16[h] += qt[f0 + fi, byte & 15]
            acc16[tn2 + h] += qt[f0 + fi, byte >> 4]


@njit(cache=True, parallel=True)
def _lut_float_nb(x2, planes, scales, zc, gsize, out):
    rows, k = x2.shape
    n = out.shape[1]
    nt_count, kt_count, nbits, tk4, tn2 = planes.shape
    tn = 2 * tn2
    k4 = k // 4
    gf = gsize // 4
    ngroups = k // gsize
    for r in prange(rows):
        x = x2[r]
        t = _row_tables(x, k4)
        ts = np.empty(ngroups, np.float32)
        rs = np.zeros(ngroups, np.float32)
        for g in range(ngroups):
            mx = np.float32(0)
            for f in range(g * gf, (g + 1) * gf):
                mx = max(mx, _abs_sum4(x, f))
                rs[g] = rs[g] + t[f, 15]
            ts[g] = mx / np.float32(127)
        q = np.empty((k4, 16), np.int8)
        for f in range(k4):
            d = ts[f // gf] if ts[f // gf] > 0 else np.float32(1)
            for idx in range(16):
                v = np.rint(t[f, idx] / d)
                q[f, idx] = np.int8(min(max(v, -127.0), 127.0))
        acc = np.zeros((ngroups, nt_count * tn), np.int32)
        acc16 = np.empty(tn, np.int16)
        for nt in range(nt_count):
            for kt in range(kt_count):
                g = kt * tk4 // gf
                for i in range(nbits):
                    _lookup_tile(q, planes, nt, kt, kt * tk4, i, tk4, tn2, acc16)
                    for h in range(tn):
                        acc[g, nt * tn + h] += np.int32(acc16[h]) << i
        for c in range(n):
            y = np.float32(0)
            for g in range(ngroups):
                inner = ts[g] * np.float32(acc[g, c]) + np.float32(zc[g, c]) * rs[g]
                y = y + scales[g, c] * (inner * np.float32(0.5))
            out[r, c] = y


@njit(cache=True, parallel=True)
def _lut_int_nb(x2, planes, zc, gsize, int8_tables, out):
    rows, k = x2.shape
    n = out.shape[1]
    nt_count, kt_count, nbits, tk4, tn2 = planes.shape
    tn = 2 * tn2
    k4 = k // 4
    ngroups = k // gsize
    for r in prange(rows):
        x = x2[r].astype(np.int32)
        t = _row_tables(x, k4)
        sh = np.zeros(kt_count, np.int32)
        if int8_tables:
            for kt in range(kt_count):
                mx = 0
                for f in range(kt * tk4, (kt + 1) * tk4):
                    mx = max(mx, _abs_sum4(x, f))
                sh[kt] = (mx > 127) + (mx > 254) + (mx > 508)
                s_ = sh[kt]
                if s_ > 0:
                    half = 1 << (s_ - 1)
                    for f in range(kt * tk4, (kt + 1) * tk4):
                        for idx in range(16):
                            v = t[f, idx]
                            t[f, idx] = (v + half - 1 + ((v >> s_) & 1)) >> s_
        qt = t.astype(np.int16)
        acc = np.zeros(nt_count * tn, np.int32)
        acc16 = np.empty(tn, np.int16)
        for nt in range(nt_count):
            for kt in range(kt_count):
                for i in range(nbits):
                    _lookup_tile(qt, planes, nt, kt, kt * tk4, i, tk4, tn2, acc16)
                    for h in range(tn):
                        acc[nt * tn + h] += (np.int32(acc16[h]) << sh[kt]) << i
        rowsum = np.zeros(ngroups, np.int32)
        for kk in range(k):
            rowsum[kk // gsize] += x[kk]
        for c in range(n):
            v = acc[c]
            for g in range(ngroups):
                v += zc[g, c] * rowsum[g]
            out[r, c] = v


@njit(cache=True, parallel=True)
def _dequant_nb(x2, w, out):
    """``out = x2 @ w`` summed in x2's dtype (float64 or int64), cast once at the end."""
    rows, k = x2.shape
    n = w.shape[1]
    for r in prange(rows):
        acc = np.zeros(n, x2.dtype)
        for kk in range(k):
            x = x2[r, kk]
            for c in range(n):
                acc[c] += x * w[kk, c]
        for c in range(n):
            out[r, c] = acc[c]


def numba_kernel(a: np.ndarray, planes: np.ndarray, scales: np.ndarray | None = None,
                 zero_points: np.ndarray | None = None, *, layout: LutLayout,
                 table_bits: int | None = None, dequant: bool = False) -> np.ndarray:
    """numba twin of :func:`reference`: bit-identical for int8 activations; for float32 the
    same operations in the same order (agreement within 1e-5 of max |y| asserted; ``dequant``:
    the reference's float64 sum, within its error bound)."""
    a, planes = np.asarray(a), np.asarray(planes)
    check_operands(layout, a, planes, scales, zero_points)
    tb = table_bits_for(a.dtype, table_bits)
    x2 = np.ascontiguousarray(a.reshape(-1, layout.K))
    if dequant:
        if a.dtype == np.float32:
            w = dequantized_weight(planes, scales, zero_points, layout).astype(np.float64)
            out = np.empty((x2.shape[0], layout.N), np.float32)
            _dequant_nb(x2.astype(np.float64), w, out)
        else:
            w = doubled_weight(codes(planes, layout), zero_points, layout.bits)
            out = np.empty((x2.shape[0], layout.N), np.int32)
            _dequant_nb(x2.astype(np.int64), w.astype(np.int64), out)
        return out.reshape(*a.shape[:-1], layout.N)
    planes = np.ascontiguousarray(planes)
    zc = zero_constant(layout, zero_points)
    if a.dtype == np.float32:
        out = np.empty((x2.shape[0], layout.N), np.float32)
        _lut_float_nb(x2, planes, np.ascontiguousarray(scales), zc, layout.group_size, out)
    else:
        out = np.empty((x2.shape[0], layout.N), np.int32)
        _lut_int_nb(x2, planes, zc, layout.group_size, tb == 8, out)
    return out.reshape(*a.shape[:-1], layout.N)



kernel = numba_kernel
"""The registry's name for the numba twin (:attr:`edgert.ops._common.op.Op.numba_kernel`)."""
