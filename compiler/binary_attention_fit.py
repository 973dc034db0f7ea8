"""Fitting the kernelized hash of binary attention on calibration data (post-training, numpy
only; ``docs/methods/binary-attention.md``).

Per attention head (or once for all heads, when the hash is shared), from the calibration
queries Q, keys K and true attention probabilities P:

1. Anchors: ``m`` (25) L2-normalized calibration vectors (queries and keys), drawn at random.
2. Bandwidth: ``gamma = 1 / (2 sigma)`` with ``2 sigma`` the mean squared distance between the
   normalized vectors and the anchors, frozen here (the runtime never recomputes it).
3. Mean feature: the mean RBF feature vector over the calibration vectors.
4. Pairs: for each query row, its ``k`` (10; at most half the valid keys) most attended keys are
   similar (+1), its ``k`` least attended dissimilar (-1). Keys a mask removes do not count.
5. The projection A (b x m), bit by bit (kernel-based supervised hashing, greedy): the target of
   a pair is ``b * label`` less what the bits so far give it; a bit's direction starts at the
   top generalized eigenvector of the pairs' feature correlation, then follows gradient steps
   (Adam) on the relaxed objective, sign replaced by tanh (2 sigmoid(2z) - 1); it is kept if
   its binarized objective beats the start's, else the start is kept; the target then loses
   the bit's contribution.

``method="pca"`` is the baseline: the rows of A are the top principal directions of the
centered features (random Gaussian rows where b exceeds m).

Arrays carry a leading group axis G (heads fitted together, independently) and hold the
calibration runs padded to one [N, S, T] block: labels ``Y`` [G, N, S, T] in {-1, 0, +1},
features [G, N, S, m] (zero at padding).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgert.errors import InputError
from edgert.ops.binary_attention.spec import FORMS
from edgert.ops.hash_codes.spec import BITS

METHODS = ("ksh", "pca")
"""How the hash projection is fitted: supervised (kernel-based supervised hashing, greedy) or
the PCA baseline."""
DEFAULT_BITS = 16


def check_options(bits: int | None, form: str | None, method: str | None = None
                  ) -> tuple[int, str, str]:
    """Validate ``--hash-bits`` / ``--attention-form`` (and the fitting method); returns them
    with their defaults (16, quadratic, ksh). Raises InputError."""
    b = DEFAULT_BITS if bits is None else bits
    if b not in BITS:
        raise InputError(f"--hash-bits must be one of {', '.join(map(str, BITS))}, got {bits!r}")
    f = "quadratic" if form is None else form
    if f not in FORMS:
        raise InputError(f"--attention-form must be one of {', '.join(FORMS)}, got {form!r}")
    m = "ksh" if method is None else method
    if m not in METHODS:
        raise InputError(f"binary attention fit method must be one of {', '.join(METHODS)}, "
                         f"got {method!r}")
    return int(b), f, m

ANCHORS = 25
TOPK = 10
STEPS = 200
LEARNING_RATE = 0.05
MASKED = -1e3
"""A bias at or below this removes a key (masks write -1e4, -1e9 or the float minimum)."""


@dataclass(frozen=True)
class HashParams:
    """The hash of one attention site: float32 ``anchors`` [Hp, m, D], ``gamma`` [Hp], ``mean``
    [Hp, m], ``proj`` [Hp, b, m] (the inputs of ``edgert.HashCodes``)."""

    anchors: np.ndarray
    gamma: np.ndarray
    mean: np.ndarray
    proj: np.ndarray


@dataclass
class SiteData:
    """Calibration tensors of one attention site, one entry per calibration run: queries
    [N, H, S, D], keys [N, H, T, D], probabilities [N, H, S, T], bias (None or broadcasting
    to the probabilities), all float32."""

    q: list[np.ndarray]
    k: list[np.ndarray]
    probs: list[np.ndarray]
    bias: list[np.ndarray | None]


@dataclass
class Block:
    """A site's calibration runs padded into one block, heads first: ``q`` [H, N, S, D],
    ``k`` [H, N, T, D], ``probs`` [H, N, S, T], ``valid`` [H, N, S, T] (a real key the mask
    keeps), ``q_real`` [N, S], ``k_real`` [N, T] (not padding)."""

    q: np.ndarray
    k: np.ndarray
    probs: np.ndarray
    valid: np.ndarray
    q_real: np.ndarray
    k_real: np.ndarray

    def pooled(self) -> Block:
        """All heads as one group (their runs side by side): for a hash shared by the heads."""
        h = self.q.shape[0]
        flat = lambda a: a.reshape(1, -1, *a.shape[2:])                     # noqa: E731
        return Block(flat(self.q), flat(self.k), flat(self.probs), flat(self.valid),
                     np.tile(self.q_real, (h, 1)), np.tile(self.k_real, (h, 1)))


def stack(data: SiteData) -> Block:
    """``data``'s runs padded to the longest query and key counts, heads first."""
    heads, d = data.q[0].shape[1], data.q[0].shape[-1]
    n = sum(q.shape[0] for q in data.q)
    s, t = max(q.shape[2] for q in data.q), max(k.shape[2] for k in data.k)
    blk = Block(np.zeros((heads, n, s, d)), np.zeros((heads, n, t, d)),
                np.zeros((heads, n, s, t)), np.zeros((heads, n, s, t), bool),
                np.zeros((n, s), bool), np.zeros((n, t), bool))
    at = 0
    for q, k, p, b in zip(data.q, data.k, data.probs, data.bias):
        m, sq, tk = q.shape[0], q.shape[2], k.shape[2]
        rows = slice(at, at + m)
        blk.q[:, rows, :sq] = np.moveaxis(q, 1, 0)
        blk.k[:, rows, :tk] = np.moveaxis(k, 1, 0)
        blk.probs[:, rows, :sq, :tk] = np.moveaxis(p, 1, 0)
        keep = np.ones(p.shape, bool) if b is None else np.broadcast_to(b > MASKED, p.shape)
        blk.valid[:, rows, :sq, :tk] = np.moveaxis(keep, 1, 0)
        blk.q_real[rows, :sq] = True
        blk.k_real[rows, :tk] = True
        at += m
    return blk


def normalize(x: np.ndarray) -> np.ndarray:
    """Vectors (last axis) divided by their L2 norms, float64 (zero vectors stay zero)."""
    x = np.asarray(x, np.float64)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(n == 0, 1, n)


def labels(probs: np.ndarray, valid: np.ndarray, topk: int = TOPK) -> np.ndarray:
    """``Y`` in {-1, 0, +1} (same shape as ``probs``, keys on the last axis): per row with v
    valid keys, its min(topk, v // 2) most attended keys +1, as many least attended -1."""
    kk = np.minimum(topk, valid.sum(-1, keepdims=True) // 2)
    low = np.argsort(np.argsort(np.where(valid, probs, np.inf), -1, kind="stable"), -1)
    high = np.argsort(np.argsort(np.where(valid, -probs, np.inf), -1, kind="stable"), -1)
    return np.where(high < kk, 1.0, 0.0) - np.where(low < kk, 1.0, 0.0)


def _signs(z: np.ndarray) -> np.ndarray:
    return np.where(z >= 0, 1.0, -1.0)


def _pair_products(zq: np.ndarray, zk: np.ndarray) -> np.ndarray:
    """[G, N, S, T]: zq_i * zk_j per run."""
    return zq[..., :, None] * zk[..., None, :]


def _flat(f: np.ndarray) -> np.ndarray:
    """Features [G, N, S, m] as [G, N * S, m]."""
    return f.reshape(f.shape[0], -1, f.shape[-1])


def _project(f: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``f a`` per group: features [G, N, S, m], directions [G, m] -> [G, N, S]."""
    return (_flat(f) @ a[:, :, None]).reshape(f.shape[:-1])


def _spectral_start(fq: np.ndarray, fk: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per group: the top generalized eigenvector of the target-weighted query-key feature
    correlation against the feature covariance, scaled so the projections have unit spread."""
    corr = np.swapaxes(_flat(fq), 1, 2) @ _flat(target @ fk)
    corr = (corr + np.swapaxes(corr, 1, 2)) / 2
    allf = np.concatenate([_flat(fq), _flat(fk)], 1)
    cov = np.swapaxes(allf, 1, 2) @ allf / allf.shape[1] + 1e-6 * np.eye(allf.shape[-1])
    w, v = np.linalg.eigh(cov)
    white = v / np.sqrt(np.maximum(w, 1e-12))[:, None, :]
    _ew, ev = np.linalg.eigh(np.swapaxes(white, 1, 2) @ corr @ white)
    a = (white @ ev[:, :, -1:])[..., 0]
    spread = np.sqrt(((allf @ a[:, :, None]) ** 2).mean((1, 2)))
    return a / np.where(spread > 0, spread, 1.0)[:, None]


def _ascend(a: np.ndarray, fq: np.ndarray, fk: np.ndarray, target: np.ndarray, steps: int
            ) -> np.ndarray:
    """Adam on the relaxed objective ``sum(target * tanh(fq a)_i tanh(fk a)_j)`` (maximized),
    every group at once."""
    m1, m2 = np.zeros_like(a), np.zeros_like(a)
    scale = 1.0 / np.maximum(np.abs(target).sum((1, 2, 3)), 1)[:, None]
    fq_t, fk_t = np.swapaxes(_flat(fq), 1, 2), np.swapaxes(_flat(fk), 1, 2)
    target_t = np.swapaxes(target, 2, 3)
    g_ = fq.shape[0]
    for step in range(1, steps + 1):
        tq, tk = np.tanh(_project(fq, a)), np.tanh(_project(fk, a))
        gq = (target @ tk[..., None])[..., 0] * (1 - tq ** 2)
        gk = (target_t @ tq[..., None])[..., 0] * (1 - tk ** 2)
        grad = -((fq_t @ gq.reshape(g_, -1, 1)) + (fk_t @ gk.reshape(g_, -1, 1)))[..., 0] * scale
        m1 = 0.9 * m1 + 0.1 * grad
        m2 = 0.999 * m2 + 0.001 * grad ** 2
        a = a - LEARNING_RATE * (m1 / (1 - 0.9 ** step)) / (
            np.sqrt(m2 / (1 - 0.999 ** step)) + 1e-8)
    return a


def _binary_products(a: np.ndarray, fq: np.ndarray, fk: np.ndarray) -> np.ndarray:
    return _pair_products(_signs(_project(fq, a)), _signs(_project(fk, a)))


def fit_projection(fq: np.ndarray, fk: np.ndarray, y: np.ndarray, bits: int,
                   steps: int = STEPS) -> np.ndarray:
    """A [G, bits, m] by greedy kernel-based supervised hashing (module docstring) on centered
    features ``fq`` [G, N, S, m], ``fk`` [G, N, T, m] and labels ``y`` [G, N, S, T]."""
    labelled = y != 0
    target = bits * y
    rows = []
    for _ in range(bits):
        start = _spectral_start(fq, fk, target)
        a = _ascend(start, fq, fk, target, steps)
        got = _binary_products(a, fq, fk)
        base = _binary_products(start, fq, fk)
        better = (target * got).sum((1, 2, 3)) >= (target * base).sum((1, 2, 3))
        a = np.where(better[:, None], a, start)
        rows.append(a)
        target = target - np.where(better[:, None, None, None], got, base) * labelled
    return np.stack(rows, 1)


def pca_projection(fq: np.ndarray, fk: np.ndarray, real: tuple[np.ndarray, np.ndarray],
                   bits: int, rng: np.random.Generator) -> np.ndarray:
    """The baseline A [G, bits, m]: top principal directions of the centered features of the
    real vectors (random Gaussian rows beyond m)."""
    out = []
    for g in range(fq.shape[0]):
        allf = np.concatenate([fq[g][real[0]], fk[g][real[1]]])
        _w, v = np.linalg.eigh(allf.T @ allf)
        rows = list(v[:, ::-1].T[:bits])
        rows += [rng.standard_normal(allf.shape[1]) for _ in range(bits - len(rows))]
        out.append(np.stack(rows))
    return np.stack(out)


def pair_auc(scores: np.ndarray, y: np.ndarray) -> float:
    """How well code scores separate the labelled pairs: the probability that a random
    similar pair scores above a random dissimilar one (ties count half)."""
    s, lab = scores[y != 0], y[y != 0]
    _values, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    rank = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]          # average ranks, 1-based
    pos = lab > 0
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if not n_pos or not n_neg:
        return float("nan")
    return float((rank[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _features(x: np.ndarray, anchors: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """RBF features [G, N, S, m] of vectors [G, N, S, D] (normalized here) to anchors
    [G, m, D]."""
    xh = normalize(x)
    d2 = ((xh ** 2).sum(-1)[..., None] - 2 * xh @ np.swapaxes(anchors, 1, 2)[:, None]
          + (anchors ** 2).sum(-1)[:, None, None, :])
    return np.exp(-np.maximum(d2, 0) * gamma[:, None, None, None])


def _kernel(blk: Block, rng: np.random.Generator, m: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Anchors [G, m, D], gamma [G], mean [G, m] and the centered features of the queries and
    keys of each group (zero at padding)."""
    anchors, gammas = [], []
    for g in range(blk.q.shape[0]):
        allx = normalize(np.concatenate([blk.q[g][blk.q_real], blk.k[g][blk.k_real]]))
        a = allx[rng.choice(len(allx), m, replace=len(allx) < m)]
        d2 = ((allx[:, None, :] - a[None]) ** 2).sum(-1)
        anchors.append(a)
        gammas.append(1.0 / max(float(d2.mean()), 1e-6))
    anchors, gamma = np.stack(anchors), np.array(gammas)
    fq, fk = _features(blk.q, anchors, gamma), _features(blk.k, anchors, gamma)
    count = blk.q_real.sum() + blk.k_real.sum()
    mean = (fq[:, blk.q_real].sum(1) + fk[:, blk.k_real].sum(1)) / count
    fq = (fq - mean[:, None, None]) * blk.q_real[None, :, :, None]
    fk = (fk - mean[:, None, None]) * blk.k_real[None, :, :, None]
    return anchors, gamma, mean, fq, fk


def _fit_block(blk: Block, bits: int, method: str, rng: np.random.Generator, topk: int,
               steps: int, m: int) -> tuple[HashParams, list[float]]:
    y = labels(blk.probs, blk.valid, topk)
    anchors, gamma, mean, fq, fk = _kernel(blk, rng, m)
    if method == "pca":
        proj = pca_projection(fq, fk, (blk.q_real, blk.k_real), bits, rng)
    else:
        proj = fit_projection(fq, fk, y, bits, steps)
    sq = _signs(fq @ np.swapaxes(proj, 1, 2)[:, None])                 # [G, N, S, b]
    sk = _signs(fk @ np.swapaxes(proj, 1, 2)[:, None])
    scores = sq @ np.swapaxes(sk, 2, 3)
    auc = [pair_auc(scores[g], y[g]) for g in range(len(proj))]
    f32 = lambda a: np.ascontiguousarray(a, np.float32)                # noqa: E731
    return HashParams(f32(anchors), f32(gamma), f32(mean), f32(proj)), auc


def _same_layout(a: Block, b: Block) -> bool:
    return (a.q.shape[1:] == b.q.shape[1:] and a.k.shape[1:] == b.k.shape[1:]
            and np.array_equal(a.q_real, b.q_real) and np.array_equal(a.k_real, b.k_real))


def fit_sites(data: list[SiteData], shared: list[bool], bits: int, method: str = "ksh",
              seed: int = 0, topk: int = TOPK, steps: int = STEPS, m: int = ANCHORS
              ) -> list[tuple[HashParams, list[float]]]:
    """The hash of each site (per head, or one for all its heads when ``shared``) and each
    head's pair AUC (:func:`pair_auc` of its binarized codes on the calibration pairs). Sites
    whose calibration blocks have the same layout (the layers of one model) are fitted in one
    batch: the same arithmetic per head, fewer numpy calls."""
    rng = np.random.default_rng(seed)
    blocks = [stack(d).pooled() if sh else stack(d) for d, sh in zip(data, shared)]
    batches: list[list[int]] = []
    for i, blk in enumerate(blocks):
        home = next((b for b in batches if _same_layout(blocks[b[0]], blk)), None)
        if home is None:
            batches.append([i])
        else:
            home.append(i)
    out: list = [None] * len(blocks)
    for batch in batches:
        cat = lambda f: np.concatenate([getattr(blocks[i], f) for i in batch])  # noqa: E731
        first = blocks[batch[0]]
        merged = Block(cat("q"), cat("k"), cat("probs"), cat("valid"), first.q_real,
                       first.k_real)
        params, auc = _fit_block(merged, bits, method, rng, topk, steps, m)
        at = 0
        for i in batch:
            g = blocks[i].q.shape[0]
            part = slice(at, at + g)
            out[i] = (HashParams(params.anchors[part], params.gamma[part], params.mean[part],
                                 params.proj[part]), auc[part])
            at += g
    return out


def fit_temperature(scores: list[np.ndarray], probs: list[np.ndarray],
                    biases: list[np.ndarray | None]) -> float:
    """The softmax temperature tau of one head minimizing the cross-entropy of
    ``softmax(tau * s + bias)`` to the true probabilities (golden-section search on log tau in
    [1e-3, 20]; the objective is convex in tau). ``scores`` [N, S, T] int, ``probs`` alike,
    ``biases`` broadcasting to them (or None)."""
    def loss(log_tau: float) -> float:
        total = 0.0
        for s, p, b in zip(scores, probs, biases):
            z = np.exp(log_tau) * s.astype(np.float64) + (0 if b is None else
                                                          np.maximum(b, -1e4))
            z = z - z.max(-1, keepdims=True)
            logsm = z - np.log(np.exp(z).sum(-1, keepdims=True))
            total -= float((np.asarray(p, np.float64) * logsm).sum())
        return total

    lo, hi = np.log(1e-3), np.log(20.0)
    g = (np.sqrt(5) - 1) / 2
    x1, x2 = hi - g * (hi - lo), lo + g * (hi - lo)
    f1, f2 = loss(x1), loss(x2)
    for _ in range(30):
        if f1 <= f2:
            hi, x2, f2 = x2, x1, f1
            x1 = hi - g * (hi - lo)
            f1 = loss(x1)
        else:
            lo, x1, f1 = x1, x2, f2
            x2 = lo + g * (hi - lo)
            f2 = loss(x2)
    return float(np.exp((lo + hi) / 2))


def temperatures(data: SiteData, params: Any, bits: int, shared: bool) -> np.ndarray:
    """The softmax temperature of the fitted codes (the op's own codes, float32): one per
    head, or one for all heads when the hash is shared (the head count may be symbolic)."""
    from edgert.ops.binary_attention.spec import scores
    from edgert.ops.hash_codes import reference as hash_codes

    p = [params.anchors, params.gamma, params.mean, params.proj]
    s = [scores(hash_codes(q, *p, bits=bits), hash_codes(k, *p, bits=bits), bits)
         for q, k in zip(data.q, data.k)]
    if shared:
        return np.array([fit_temperature(s, data.probs, data.bias)], np.float32)
    pick = lambda a, h: None if a is None else a[:, h if a.shape[1] > 1 else 0]   # noqa: E731
    return np.array([fit_temperature([x[:, h] for x in s], [p_[:, h] for p_ in data.probs],
                                     [pick(b, h) for b in data.bias])
                     for h in range(data.q[0].shape[1])], np.float32)


def one_blas_thread() -> Any:
    """The fit multiplies small matrices: one BLAS thread beats several contending for the
    cores (20x on a busy two-core machine). Limited through threadpoolctl where installed."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, "blas")
