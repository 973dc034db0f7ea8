"""``HashCodes``: float32 vectors -> packed b-bit binary codes by a kernelized hash (EcoFormer's
kernel-based hash with a frozen bandwidth; ``docs/methods/binary-attention.md``).

Specification, per vector ``x`` (float32 [D]) of head ``h`` (float32 throughout; ``fl(.)`` is
one float32 rounding, sums start at 0 and run in ascending index):
    n2    = sum_d fl(x_d * x_d);   nrm = sqrt(n2), or 1 where that is 0
    xh_d  = fl(x_d / nrm)                                    L2-normalized
    dist_j = sum_d fl(e * e), e = fl(xh_d - anchors[h, j, d])    j = 0 .. m-1
    f_j   = exp_neg(-fl(dist_j * gamma[h]))                  RBF feature, gamma = 1 / (2 sigma)
    c_j   = fl(f_j - mean[h, j])                             centered by the calibration mean
    p_i   = sum_j fl(proj[h, i, j] * c_j)                    i = 0 .. b-1
    code  = sum_i (p_i >= 0) << i                            bit i set: +1, clear: -1 (0 -> +1)
``exp_neg`` is the pinned float32 exponential of :mod:`edgert.ops._floatmath` (within 4e-7 of
exp). Every rounding is fixed, so numpy, numba and TVM give the same codes bit for bit. The
code of a vector does not change when the vector is multiplied by a positive number (up to the
rounding of the normalization): attention's 1/sqrt(d) scale may sit before or after it.

Read as +/-1 vectors H (bit set = +1), two codes' dot product is
``b - 2 * popcount(code_a xor code_b)`` (:func:`edgert.ops.binary_attention.spec.scores`).

ONNX (domain ``edgert``): ``HashCodes(X: float32 [..., H, S, D], Anchors: float32 [Hp, m, D],
Gamma: float32 [Hp], Mean: float32 [Hp, m], Proj: float32 [Hp, b, m]) -> Codes: uint8 / uint16
/ uint32 [..., H, S]`` for ``bits`` b = 8 / 16 / 32; ``Hp`` is H (one hash per head) or 1 (one
hash shared by every head). The head is the third axis from the end.
"""

from __future__ import annotations

import numpy as np

from edgert.ops._common.op import Example
from edgert.ops._floatmath import exp_neg

OP_TYPE = "HashCodes"
BITS = (8, 16, 32)
"""Code widths: one unsigned integer per vector."""
CODE_DTYPES = {8: np.uint8, 16: np.uint16, 32: np.uint32}


def code_dtype(bits: int) -> np.dtype:
    """The unsigned integer dtype holding ``bits``-bit codes; ValueError for another width."""
    if int(bits) not in BITS:
        raise ValueError(f"HashCodes bits must be one of {list(BITS)}, got {bits}")
    return np.dtype(CODE_DTYPES[int(bits)])


def check_inputs(x: np.ndarray, anchors: np.ndarray, gamma: np.ndarray, mean: np.ndarray,
                 proj: np.ndarray, bits: int) -> tuple[int, int]:
    """Raise on dtypes or shapes the kernels do not take; returns (Hp, m)."""
    code_dtype(bits)
    for name, a in (("X", x), ("Anchors", anchors), ("Gamma", gamma), ("Mean", mean),
                    ("Proj", proj)):
        if a.dtype != np.float32:
            raise TypeError(f"HashCodes {name} must be float32, got {a.dtype}")
    if x.ndim < 3:
        raise ValueError(f"HashCodes X must be [..., H, S, D], got shape {x.shape}")
    hp, m = anchors.shape[0], anchors.shape[1]
    want = {"Anchors": (hp, m, x.shape[-1]), "Gamma": (hp,), "Mean": (hp, m),
            "Proj": (hp, int(bits), m)}
    for name, a in (("Anchors", anchors), ("Gamma", gamma), ("Mean", mean), ("Proj", proj)):
        if a.shape != want[name]:
            raise ValueError(f"HashCodes {name} must have shape {want[name]}, got {a.shape}")
    if hp not in (1, x.shape[-3]):
        raise ValueError(f"HashCodes parameters are per head ({x.shape[-3]}) or shared (1), "
                         f"got {hp}")
    return hp, m


def _param(p: np.ndarray, ndim: int) -> np.ndarray:
    """A per-head value [Hp] shaped to broadcast against tokens [..., H, S] of rank ndim."""
    return p.reshape((1,) * (ndim - 2) + (p.shape[0], 1))


def projections(x: np.ndarray, anchors: np.ndarray, gamma: np.ndarray, mean: np.ndarray,
                proj: np.ndarray) -> np.ndarray:
    """The pre-sign projections ``p`` (float32 [..., H, S, b]) of the module docstring."""
    x = np.asarray(x, np.float32)
    tok = x.shape[:-1]
    n2 = np.zeros(tok, np.float32)
    for d in range(x.shape[-1]):
        n2 = n2 + x[..., d] * x[..., d]
    nrm = np.sqrt(n2)
    nrm = np.where(nrm == 0, np.float32(1), nrm)
    xh = x / nrm[..., None]
    m, b = anchors.shape[1], proj.shape[1]
    c = []
    for j in range(m):
        dist = np.zeros(tok, np.float32)
        for d in range(x.shape[-1]):
            e = xh[..., d] - _param(anchors[:, j, d], len(tok))
            dist = dist + e * e
        f = exp_neg(-(dist * _param(gamma, len(tok))))
        c.append(f - _param(mean[:, j], len(tok)))
    p = np.zeros(tok + (b,), np.float32)
    for i in range(b):
        acc = np.zeros(tok, np.float32)
        for j in range(m):
            acc = acc + _param(proj[:, i, j], len(tok)) * c[j]
        p[..., i] = acc
    return p


def pack(bits_set: np.ndarray, bits: int) -> np.ndarray:
    """Boolean [..., b] (True: +1) -> codes [...] (bit i = element i)."""
    weights = np.left_shift(np.uint64(1), np.arange(bits, dtype=np.uint64))
    return (bits_set.astype(np.uint64) * weights).sum(-1).astype(code_dtype(bits))


def unpack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Codes [...] -> +/-1 int32 [..., b] (bit i set: +1)."""
    c = np.asarray(codes).astype(np.uint64)[..., None]
    set_ = (c >> np.arange(bits, dtype=np.uint64)) & np.uint64(1)
    return (2 * set_.astype(np.int32) - 1).astype(np.int32)


def reference(x: np.ndarray, anchors: np.ndarray, gamma: np.ndarray, mean: np.ndarray,
              proj: np.ndarray, *, bits: int) -> np.ndarray:
    """Normative numpy HashCodes.

    Args:
        x: float32 [..., H, S, D], the vectors (queries or keys of each head).
        anchors: float32 [Hp, m, D], unit vectors the RBF features are measured to.
        gamma: float32 [Hp], 1 / (2 sigma) of the RBF kernel.
        mean: float32 [Hp, m], the mean feature vector of the calibration data.
        proj: float32 [Hp, b, m], the hash projection A.
        bits: b, 8 / 16 / 32.

    Returns:
        uint8 / uint16 / uint32 [..., H, S]: bit i is set where projection i is >= 0.
    """
    x, anchors, gamma, mean, proj = (np.asarray(a) for a in (x, anchors, gamma, mean, proj))
    check_inputs(x, anchors, gamma, mean, proj, bits)
    with np.errstate(over="ignore", invalid="ignore"):
        p = projections(x, anchors, gamma, mean, proj)
    return pack(p >= 0, bits)


def random_params(rng: np.random.Generator, heads: int, dim: int, bits: int, m: int = 25
                  ) -> tuple[np.ndarray, ...]:
    """Plausible parameters: unit anchors, gamma ~ 1, a small mean, a normal projection."""
    anchors = rng.standard_normal((heads, m, dim)).astype(np.float32)
    anchors /= np.linalg.norm(anchors, axis=-1, keepdims=True).astype(np.float32)
    gamma = rng.uniform(0.5, 2.0, heads).astype(np.float32)
    mean = rng.uniform(0.05, 0.3, (heads, m)).astype(np.float32)
    proj = rng.standard_normal((heads, bits, m)).astype(np.float32)
    return anchors, gamma, mean, proj


def example(rng: np.random.Generator) -> Example:
    """float32 [2, 2, 5, 8] vectors, per-head parameters with m = 6 anchors, 16 bits."""
    x = rng.standard_normal((2, 2, 5, 8)).astype(np.float32)
    return Example((x, *random_params(rng, 2, 8, 16, m=6)), {"bits": 16})
