"""numba kernel of ``BinaryAttention``, bit-identical to
:func:`edgert.ops.binary_attention.spec.reference`.

Leading dims and heads flattened to rows ``n`` (head ``n % H``). Quadratic form: one query row
per iteration (parallel): its popcount scores, logits, maximum, exponentials, then the sum and
the weighted value rows in ascending key order. Linear form: one (batch, head) per iteration:
``H^T U``, the key sums, then per query the signed sums over bits. The spec's float32
operations in its order throughout."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from edgert.ops._floatmath.numba import exp_neg_nb
from edgert.ops.binary_attention.spec import check_inputs

_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)


@njit(cache=True, inline="always")
def popcount_nb(x: np.uint64) -> np.int64:
    """Set bits of a uint64 (SWAR: pairs, nibbles, bytes, then a multiply-free byte sum)."""
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    x = x + (x >> np.uint64(8))
    x = x + (x >> np.uint64(16))
    x = x + (x >> np.uint64(32))
    return np.int64(x & np.uint64(0x7F))


@njit(cache=True, parallel=True)
def _scores_nb(cq, ck, bits, out):
    for n in prange(cq.shape[0]):
        for i in range(cq.shape[1]):
            for j in range(ck.shape[1]):
                out[n, i, j] = bits - 2 * popcount_nb(np.uint64(cq[n, i]) ^ np.uint64(ck[n, j]))


def numba_scores(cq: np.ndarray, ck: np.ndarray, bits: int) -> np.ndarray:
    """numba twin of ``spec.scores``: int32 [..., H, S, T] popcount scores."""
    cq2 = cq.reshape(-1, cq.shape[-1]).astype(np.uint32)
    ck2 = ck.reshape(-1, ck.shape[-1]).astype(np.uint32)
    out = np.empty((cq2.shape[0], cq2.shape[1], ck2.shape[1]), np.int32)
    _scores_nb(cq2, ck2, int(bits), out)
    return out.reshape(*cq.shape, ck.shape[-1])


@njit(cache=True, parallel=True)
def _quadratic_nb(cq, ck, v, temp, heads, bias, has_bias, bits, out):
    n_rows, seq = cq.shape
    keys, dv = v.shape[1], v.shape[2]
    for t in prange(n_rows * seq):
        n = t // seq
        i = t - n * seq
        tau = temp[0] if temp.shape[0] == 1 else temp[n % heads]
        logits = np.empty(keys, np.float32)
        for j in range(keys):
            s = bits - 2 * popcount_nb(np.uint64(cq[n, i]) ^ np.uint64(ck[n, j]))
            lj = tau * np.float32(s)
            if has_bias:
                lj = lj + bias[n, i, j]
            logits[j] = lj
        mx = logits[0]
        for j in range(1, keys):
            if logits[j] > mx:
                mx = logits[j]
        den = _ZERO
        num = np.zeros(dv, np.float32)
        for j in range(keys):
            e = exp_neg_nb(logits[j] - mx)
            den = den + e
            for d in range(dv):
                num[d] = num[d] + e * v[n, j, d]
        r = _ONE / den
        for d in range(dv):
            out[n, i, d] = num[d] * r


@njit(cache=True, parallel=True)
def _linear_nb(cq, ck, v, bias, has_bias, bits, out):
    n_rows, seq = cq.shape
    keys, dv = v.shape[1], v.shape[2]
    c = np.float32(bits + 1)
    for n in prange(n_rows):
        gm = np.zeros((bits, dv), np.float32)
        g = np.zeros(bits, np.float32)
        vs = np.zeros(dv, np.float32)
        ws = _ZERO
        u = np.empty(dv, np.float32)
        for j in range(keys):
            w = exp_neg_nb(bias[n, 0, j]) if has_bias else _ONE
            for d in range(dv):
                u[d] = w * v[n, j, d] if has_bias else v[n, j, d]
            code = np.uint64(ck[n, j])
            for k in range(bits):
                if (code >> np.uint64(k)) & np.uint64(1):
                    for d in range(dv):
                        gm[k, d] = gm[k, d] + u[d]
                    g[k] = g[k] + w
                else:
                    for d in range(dv):
                        gm[k, d] = gm[k, d] - u[d]
                    g[k] = g[k] - w
            for d in range(dv):
                vs[d] = vs[d] + u[d]
            ws = ws + w
        _linear_rows(cq, gm, g, vs, ws, c, bits, n, out)


@njit(cache=True, inline="always")
def _linear_rows(cq, gm, g, vs, ws, c, bits, n, out):
    seq, dv = out.shape[1], out.shape[2]
    num = np.empty(dv, np.float32)
    for i in range(seq):
        code = np.uint64(cq[n, i])
        num[:] = _ZERO
        den = _ZERO
        for k in range(bits):
            if (code >> np.uint64(k)) & np.uint64(1):
                for d in range(dv):
                    num[d] = num[d] + gm[k, d]
                den = den + g[k]
            else:
                for d in range(dv):
                    num[d] = num[d] - gm[k, d]
                den = den - g[k]
        r = _ONE / (den + c * ws)
        for d in range(dv):
            out[n, i, d] = (num[d] + c * vs[d]) * r


def numba_kernel(cq: np.ndarray, ck: np.ndarray, v: np.ndarray,
                 temperature: np.ndarray | None = None, bias: np.ndarray | None = None, *,
                 bits: int, form: str = "quadratic") -> np.ndarray:
    """numba twin of ``spec.reference`` (bit-identical): codes [..., H, S], [..., H, T], V
    [..., H, T, Dv] -> float32 [..., H, S, Dv]."""
    cq, ck, v, temperature, bias = (None if a is None else np.asarray(a)
                                    for a in (cq, ck, v, temperature, bias))
    check_inputs(cq, ck, v, temperature, bias, bits, form)
    heads, seq, keys, dv = v.shape[-3], cq.shape[-1], v.shape[-2], v.shape[-1]
    cq2 = cq.reshape(-1, seq).astype(np.uint32)        # one compiled kernel for every width
    ck2 = ck.reshape(-1, keys).astype(np.uint32)
    v3 = np.ascontiguousarray(v).reshape(-1, keys, dv)
    rows = 1 if form == "linear" else seq
    if bias is None:
        b3 = np.zeros((1, 1, 1), np.float32)
    else:
        full = (*cq.shape[:-1], rows, keys)
        b3 = np.ascontiguousarray(np.broadcast_to(bias[..., :rows, :], full)).reshape(-1, rows,
                                                                                        keys)
    out = np.empty((cq2.shape[0], seq, dv), np.float32)
    if form == "quadratic":
        _quadratic_nb(cq2, ck2, v3, np.ascontiguousarray(temperature), heads, b3,
                      bias is not None, bits, out)
    else:
        _linear_nb(cq2, ck2, v3, b3, bias is not None, bits, out)
    return out.reshape(*cq.shape, dv)


kernel = numba_kernel
"""The registry's entry point (:attr:`edgert.ops._common.op.Op.numba_kernel`)."""
