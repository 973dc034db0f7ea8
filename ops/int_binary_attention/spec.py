"""``IntBinaryAttention``: binary attention in integers only: int8 queries and keys hashed to
packed b-bit codes by the sign of an int8 projection, similarities by xor and popcount, in a
quadratic form (integer scores for ``Shiftmax``) or a linear form (the normalized kernel sum
of int8 values, one integer division per output) (``docs/methods/binary-attention.md``).

Codes, per vector x (int8 [D]) of head h, with P the int8 projection of the head ([b, D]):
    z_i   = sum_d x_d * P[h, i, d]                 int32, exact (|z_i| <= D * 127 * 128)
    code  = sum_i (z_i >= 0) << i                  uint8/16/32 for b = 8/16/32 (0 counts as +1)
Read as a +/-1 vector H (bit set = +1), two codes have the dot product
    s_ij = H_i . H_j = b - 2 * popcount(cq_i xor ck_j)                     int32 in [-b, b]

``form = "quadratic"``: the output is the scores times the head's integer multiplier m_h
(the ``Multiplier`` input, 1 when absent), int32 [..., H, S, T]:
    out_ij = m_h * s_ij

``form = "linear"``: with c = b + 1, every kernel value s_ij + c is in [1, 2b + 1], and the
output is the kernel-weighted mean of the int8 value rows V with ``frac`` fraction bits,
int32 [..., H, S, Dv]:
    num_id = sum_j (s_ij + c) v_jd,   den_i = sum_j (s_ij + c)       exact integers
    out_id = floor((num_id * 2**(frac+1) + den_i) / (2 den_i))      num / den * 2**frac,
                                                                    rounded half up
By associativity num and den need no score: with G = H_kᵀ V (additions and subtractions of
value rows chosen by the key bits), g = sum_j H_j, vs = sum_j v_j,
    num_id = sum_k (+G_kd if bit k of cq_i else -G_kd) + c * vs_d
    den_i  = sum_k (+g_k  if bit k of cq_i else -g_k)  + c * T
(:func:`kernel_sums` computes them the quadratic way, score by score; both are exact, so they
are equal). Integer bounds: ``|num| <= (2b + 1) * T * 128 < 2**31`` (T at most
:func:`max_keys`), ``den >= T``; the division runs in int64 (``num * 2**(frac+1)`` needs it);
``|out| <= 128 * 2**frac`` (a mean of int8 values), below 2**31 for ``frac <= 23``.
With ``frac = k - 1`` the output has the units of ``Shiftmax(k bits) @ V``: the quantizer's
Requant after that product applies unchanged.

ONNX (domain ``edgert``): ``IntBinaryAttention(Q: int8 [..., H, S, D], K: int8 [..., H, T, D],
Proj: int8 [Hp, b, D], Multiplier: int32 [Hp] (optional; quadratic form), V: int8
[..., H, T, Dv] (optional; required by the linear form)) -> int32``; attributes ``bits``
(8, 16, 32), ``form`` (``quadratic`` or ``linear``) and ``frac`` (linear form, default 15,
0..23). Hp is H (one projection per head) or 1 (shared). Q, K and V share their leading dims.
"""

from __future__ import annotations

import numpy as np

from edgert.ops._common.op import Example
from edgert.ops.binary_attention.spec import FORMS, check_form, scores
from edgert.ops.hash_codes.spec import code_dtype

OP_TYPE = "IntBinaryAttention"
MAX_FRAC = 23
"""Largest ``frac``: ``128 * 2**frac`` stays below 2**31."""
DEFAULT_FRAC = 15
"""The units of a 16-bit Shiftmax's probabilities (2**-15) times V."""

__all__ = ["OP_TYPE", "FORMS", "MAX_FRAC", "DEFAULT_FRAC", "check_inputs", "codes",
           "kernel_sums", "linear_sums", "max_keys", "random_inputs", "reference", "round_div",
           "example"]


def max_keys(bits: int) -> int:
    """The largest key count T whose linear-form sums fit int32: ``(2b + 1) * T * 128 < 2**31``."""
    return ((1 << 31) - 1) // ((2 * int(bits) + 1) * 128)


def check_inputs(q: np.ndarray, k: np.ndarray, proj: np.ndarray, mult: np.ndarray | None,
                 v: np.ndarray | None, bits: int, form: str, frac: int) -> None:
    """Raise on dtypes or shapes the kernels do not take."""
    check_form(form)
    code_dtype(bits)
    if any(a.dtype != np.int8 for a in (q, k, proj)):
        raise TypeError(f"IntBinaryAttention Q, K and Proj must be int8, got {q.dtype}, "
                        f"{k.dtype}, {proj.dtype}")
    heads = q.shape[-3] if q.ndim >= 3 else 0
    if q.ndim < 3 or k.ndim != q.ndim or k.shape[:-2] != q.shape[:-2] or k.shape[-1] != \
            q.shape[-1] or proj.ndim != 3 or proj.shape[1:] != (bits, q.shape[-1]) or \
            proj.shape[0] not in (1, heads):
        raise ValueError(f"IntBinaryAttention needs Q [..., H, S, D], K [..., H, T, D] and Proj "
                         f"[H or 1, {bits}, D]; got {q.shape}, {k.shape}, {proj.shape}")
    if mult is not None and (mult.dtype != np.int32 or mult.shape not in ((1,), (heads,))):
        raise ValueError(f"IntBinaryAttention Multiplier must be int32 [H] or [1], got "
                         f"{mult.dtype} {mult.shape}")
    if form == "linear":
        if v is None or v.dtype != np.int8 or v.shape[:-1] != k.shape[:-1]:
            raise ValueError(f"IntBinaryAttention linear form needs int8 V [..., H, T, Dv] "
                             f"beside K {k.shape}, got {None if v is None else v.shape}")
        if k.shape[-2] > max_keys(bits):
            raise ValueError(f"IntBinaryAttention linear form: {k.shape[-2]} keys overflow "
                             f"int32 sums (at most {max_keys(bits)} with {bits} bits)")
        if not 0 <= int(frac) <= MAX_FRAC:
            raise ValueError(f"IntBinaryAttention frac must be in 0..{MAX_FRAC}, got {frac}")


def codes(x: np.ndarray, proj: np.ndarray, bits: int) -> np.ndarray:
    """Packed codes [..., H, S] (``code_dtype(bits)``) of int8 vectors ``x`` [..., H, S, D]
    under the int8 projection ``proj`` [Hp, b, D]."""
    z = x.astype(np.int64) @ np.swapaxes(proj.astype(np.int64), -1, -2)   # [..., H, S, b]
    weights = np.left_shift(np.uint64(1), np.arange(bits, dtype=np.uint64))
    return ((z >= 0).astype(np.uint64) * weights).sum(-1).astype(code_dtype(bits))


def _signs(c: np.ndarray, bits: int) -> np.ndarray:
    """int64 [..., n, b]: +1 where bit k of the code is set, else -1."""
    set_ = (c.astype(np.uint64)[..., None] >> np.arange(bits, dtype=np.uint64)) & np.uint64(1)
    return 2 * set_.astype(np.int64) - 1


def linear_sums(cq: np.ndarray, ck: np.ndarray, v: np.ndarray, bits: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """The linear form's int64 ``num`` [..., H, S, Dv] and ``den`` [..., H, S], by
    associativity (module docstring)."""
    c = bits + 1
    hq, hk = _signs(cq, bits), _signs(ck, bits)
    v64 = v.astype(np.int64)
    g_mat = np.swapaxes(hk, -1, -2) @ v64                         # [..., b, Dv]
    g = hk.sum(-2)                                                # [..., b]
    num = hq @ g_mat + c * v64.sum(-2)[..., None, :]
    den = hq @ g[..., None] + c * v.shape[-2]
    return num, den[..., 0]


def kernel_sums(cq: np.ndarray, ck: np.ndarray, v: np.ndarray, bits: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """The same ``num`` and ``den`` computed score by score from the popcount scores:
    ``sum_j (s_ij + c) v_j`` and ``sum_j (s_ij + c)`` (int64)."""
    kern = scores(cq, ck, bits).astype(np.int64) + (bits + 1)
    return kern @ v.astype(np.int64), kern.sum(-1)


def round_div(num: np.ndarray, den: np.ndarray, frac: int) -> np.ndarray:
    """int32 ``floor((num * 2**(frac+1) + den) / (2 den))`` for int64 num, den > 0."""
    num, den = np.asarray(num, np.int64), np.asarray(den, np.int64)
    return np.floor_divide(num * (1 << (frac + 1)) + den, 2 * den).astype(np.int32)


def reference(q: np.ndarray, k: np.ndarray, proj: np.ndarray, mult: np.ndarray | None = None,
              v: np.ndarray | None = None, *, bits: int, form: str = "quadratic",
              frac: int = DEFAULT_FRAC) -> np.ndarray:
    """Normative numpy IntBinaryAttention (module docstring).

    Args:
        q: int8 queries [..., H, S, D]; k: int8 keys [..., H, T, D].
        proj: int8 [Hp, b, D], the hash of each head (Hp = H or 1).
        mult: optional int32 [Hp], the quadratic form's multiplier per head (1 when absent).
        v: int8 values [..., H, T, Dv] (linear form).
        bits: b; form: ``quadratic`` or ``linear``; frac: the linear output's fraction bits.

    Returns:
        int32 [..., H, S, T] (quadratic) or [..., H, S, Dv] (linear).
    """
    q, k, proj = (np.asarray(a) for a in (q, k, proj))
    mult, v = (None if a is None else np.asarray(a) for a in (mult, v))
    check_inputs(q, k, proj, mult, v, bits, form, frac)
    cq, ck = codes(q, proj, bits), codes(k, proj, bits)
    if form == "quadratic":
        s = scores(cq, ck, bits)
        return s if mult is None else (s * mult.reshape(-1, 1, 1)).astype(np.int32)
    num, den = linear_sums(cq, ck, v, bits)
    return round_div(num, den[..., None], frac)


def random_inputs(rng: np.random.Generator, lead: tuple[int, ...], heads: int, s: int, t: int,
                  d: int, dv: int, bits: int, shared: bool = False) -> tuple[np.ndarray, ...]:
    """Random int8 Q, K, Proj, V (values in [-128, 127], the projection in [-127, 127]) and an
    int32 multiplier in [1, 7]."""
    def i8(*shape: int) -> np.ndarray:
        return rng.integers(-128, 128, shape, dtype=np.int8)

    proj = rng.integers(-127, 128, (1 if shared else heads, bits, d), dtype=np.int8)
    mult = rng.integers(1, 8, (1 if shared else heads,), dtype=np.int32)
    return (i8(*lead, heads, s, d), i8(*lead, heads, t, d), proj, mult,
            i8(*lead, heads, t, dv))


def example(rng: np.random.Generator) -> Example:
    """Linear form, 16-bit codes: Q [2, 2, 5, 8], K and V [2, 2, 6, 8], one projection per
    head (the quadratic form is tested in ``tests/test_op_int_binary_attention.py``)."""
    q, k, proj, _mult, v = random_inputs(rng, (2,), 2, 5, 6, 8, 8, 16)
    return Example((q, k, proj, None, v), {"bits": 16, "form": "linear", "frac": 15})
