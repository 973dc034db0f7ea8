"""numba kernel of ``HashCodes``, bit-identical to :func:`edgert.ops.hash_codes.spec.reference`.

One vector per iteration (parallel over all of them), the spec's float32 operations in its
order: the norm, the normalized vector, per anchor the squared distance and its feature, per
bit the projection and its sign."""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from edgert.ops._floatmath.numba import exp_neg_nb
from edgert.ops.hash_codes.spec import check_inputs, code_dtype

_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)


@njit(cache=True, parallel=True)
def _hash_nb(x2, heads, seq, anchors, gamma, mean, proj, out):
    n_tok, dim = x2.shape
    m = anchors.shape[1]
    b = proj.shape[1]
    shared = anchors.shape[0] == 1
    for t in prange(n_tok):
        h = 0 if shared else (t // seq) % heads
        n2 = _ZERO
        for d in range(dim):
            n2 = n2 + x2[t, d] * x2[t, d]
        nrm = np.float32(math.sqrt(n2))
        if nrm == _ZERO:
            nrm = _ONE
        xh = np.empty(dim, np.float32)
        for d in range(dim):
            xh[d] = x2[t, d] / nrm
        c = np.empty(m, np.float32)
        for j in range(m):
            dist = _ZERO
            for d in range(dim):
                e = xh[d] - anchors[h, j, d]
                dist = dist + e * e
            c[j] = exp_neg_nb(-(dist * gamma[h])) - mean[h, j]
        code = np.uint64(0)
        for i in range(b):
            acc = _ZERO
            for j in range(m):
                acc = acc + proj[h, i, j] * c[j]
            if acc >= _ZERO:
                code |= np.uint64(1) << np.uint64(i)
        out[t] = code


def numba_kernel(x: np.ndarray, anchors: np.ndarray, gamma: np.ndarray, mean: np.ndarray,
                 proj: np.ndarray, *, bits: int) -> np.ndarray:
    """numba twin of ``spec.reference`` (bit-identical): float32 [..., H, S, D] -> codes
    [..., H, S]."""
    x, anchors, gamma, mean, proj = (np.asarray(a) for a in (x, anchors, gamma, mean, proj))
    check_inputs(x, anchors, gamma, mean, proj, bits)
    x2 = np.ascontiguousarray(x).reshape(-1, x.shape[-1])
    out = np.empty(x2.shape[0], np.uint64)
    _hash_nb(x2, x.shape[-3], x.shape[-2], np.ascontiguousarray(anchors),
             np.ascontiguousarray(gamma), np.ascontiguousarray(mean),
             np.ascontiguousarray(proj), out)
    return out.astype(code_dtype(bits)).reshape(x.shape[:-1])


kernel = numba_kernel
"""The registry's entry point (:attr:`edgert.ops._common.op.Op.numba_kernel`)."""
