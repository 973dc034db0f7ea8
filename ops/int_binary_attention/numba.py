"""numba kernel of ``IntBinaryAttention``, bit-identical to
:func:`edgert.ops.int_binary_attention.spec.reference` (exact integer arithmetic, so the order
of the sums does not matter).

Leading dims and heads flattened to rows ``n`` (head ``n % H``). The codes: one vector per
iteration (parallel), the int32 projection sums and their signs packed into a uint64.
Quadratic form: one query row per iteration, one xor and popcount (SWAR,
:func:`edgert.ops.binary_attention.numba.popcount_nb`) per key. Linear form: one (batch, head)
per iteration: ``H^T V`` and the key sums in int32, then per query the signed sums over bits
and the rounded int64 division."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from edgert.ops.binary_attention.numba import popcount_nb
from edgert.ops.int_binary_attention.spec import DEFAULT_FRAC, check_inputs


@njit(cache=True, parallel=True)
def _codes_nb(x, proj, heads, out):
    n_rows, seq, dim = x.shape
    bits = proj.shape[1]
    for t in prange(n_rows * seq):
        n = t // seq
        i = t - n * seq
        h = 0 if proj.shape[0] == 1 else n % heads
        code = np.uint64(0)
        for k in range(bits):
            z = np.int32(0)
            for d in range(dim):
                z += np.int32(x[n, i, d]) * np.int32(proj[h, k, d])
            if z >= 0:
                code |= np.uint64(1) << np.uint64(k)
        out[n, i] = code


@njit(cache=True, parallel=True)
def _quadratic_nb(cq, ck, mult, heads, bits, out):
    n_rows, seq = cq.shape
    keys = ck.shape[1]
    for t in prange(n_rows * seq):
        n = t // seq
        i = t - n * seq
        m = mult[0] if mult.shape[0] == 1 else mult[n % heads]
        for j in range(keys):
            s = bits - 2 * popcount_nb(cq[n, i] ^ ck[n, j])
            out[n, i, j] = np.int32(m * s)


@njit(cache=True, parallel=True)
def _linear_nb(cq, ck, v, bits, frac, out):
    n_rows, seq = cq.shape
    keys, dv = v.shape[1], v.shape[2]
    c = np.int32(bits + 1)
    scale = np.int64(1) << np.int64(frac + 1)
    for n in prange(n_rows):
        gm = np.zeros((bits, dv), np.int32)
        g = np.zeros(bits, np.int32)
        vs = np.zeros(dv, np.int32)
        for j in range(keys):
            code = ck[n, j]
            for k in range(bits):
                if (code >> np.uint64(k)) & np.uint64(1):
                    for d in range(dv):
                        gm[k, d] += np.int32(v[n, j, d])
                    g[k] += 1
                else:
                    for d in range(dv):
                        gm[k, d] -= np.int32(v[n, j, d])
                    g[k] -= 1
            for d in range(dv):
                vs[d] += np.int32(v[n, j, d])
        num = np.empty(dv, np.int32)
        for i in range(seq):
            code = cq[n, i]
            for d in range(dv):
                num[d] = c * vs[d]
            den = c * np.int32(keys)
            for k in range(bits):
                if (code >> np.uint64(k)) & np.uint64(1):
                    for d in range(dv):
                        num[d] += gm[k, d]
                    den += g[k]
                else:
                    for d in range(dv):
                        num[d] -= gm[k, d]
                    den -= g[k]
            den2 = np.int64(2) * np.int64(den)
            for d in range(dv):
                out[n, i, d] = np.int32((np.int64(num[d]) * scale + np.int64(den)) // den2)


def numba_codes(x: np.ndarray, proj: np.ndarray) -> np.ndarray:
    """uint64 [rows, S] codes of int8 ``x`` [..., H, S, D] (rows = leading dims x heads)."""
    heads, seq, dim = x.shape[-3:]
    x3 = np.ascontiguousarray(x).reshape(-1, seq, dim)
    out = np.empty(x3.shape[:2], np.uint64)
    _codes_nb(x3, np.ascontiguousarray(proj), heads, out)
    return out


def numba_kernel(q: np.ndarray, k: np.ndarray, proj: np.ndarray, mult: np.ndarray | None = None,
                 v: np.ndarray | None = None, *, bits: int, form: str = "quadratic",
                 frac: int = DEFAULT_FRAC) -> np.ndarray:
    """numba twin of ``spec.reference`` (bit-identical): int8 Q [..., H, S, D], K [..., H, T, D],
    Proj [Hp, b, D], optional int32 Multiplier [Hp], int8 V [..., H, T, Dv] -> int32
    [..., H, S, T] (quadratic) or [..., H, S, Dv] (linear)."""
    q, k, proj = (np.asarray(a) for a in (q, k, proj))
    mult, v = (None if a is None else np.asarray(a) for a in (mult, v))
    check_inputs(q, k, proj, mult, v, bits, form, frac)
    heads, seq, keys = q.shape[-3], q.shape[-2], k.shape[-2]
    cq, ck = numba_codes(q, proj), numba_codes(k, proj)
    if form == "quadratic":
        m = np.ones(1, np.int32) if mult is None else np.ascontiguousarray(mult)
        out = np.empty((cq.shape[0], seq, keys), np.int32)
        _quadratic_nb(cq, ck, m, heads, bits, out)
        return out.reshape(*q.shape[:-1], keys)
    dv = v.shape[-1]
    out = np.empty((cq.shape[0], seq, dv), np.int32)
    _linear_nb(cq, ck, np.ascontiguousarray(v).reshape(-1, keys, dv), bits, int(frac), out)
    return out.reshape(*q.shape[:-1], dv)


kernel = numba_kernel
"""The registry's entry point (:attr:`edgert.ops._common.op.Op.numba_kernel`)."""
