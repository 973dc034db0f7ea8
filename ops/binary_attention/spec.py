"""``BinaryAttention``: attention whose query-key similarities come from binary codes by xor and
popcount (EcoFormer / ShiftAddViT; ``docs/methods/binary-attention.md``).

Codes are b-bit words (:mod:`edgert.ops.hash_codes`), read as +/-1 vectors H (bit set = +1).
Scores, exact integers (int32):
    s_ij = H_i . H_j = b - 2 * popcount(cq_i xor ck_j)                      in [-b, b]

Float32 arithmetic below: ``fl(.)`` is one float32 rounding, sums start at 0 and run in
ascending index; ``exp_neg`` is the pinned exponential of :mod:`edgert.ops._floatmath`. With
those fixed, numpy, numba and TVM give the same bits.

``form = "quadratic"`` (softmax over the popcount scores, O(S T)):
    l_ij  = fl(temperature[h] * s_ij)  (+ bias_ij, one more rounding, when a bias is given)
    e_ij  = exp_neg(fl(l_ij - max_j l_ij))
    out_i = fl(num_i * fl(1 / den_i)),  num_id = sum_j fl(e_ij * v_jd),  den_i = sum_j e_ij

``form = "linear"`` (the kernel s_ij + c with c = b + 1 >= 1 - s_ij, by associativity, O(S + T)):
    w_j   = exp_neg(bias_j) when a bias is given (constant along the query axis), else 1
    u_jd  = fl(w_j * v_jd) (v_jd without a bias)
    G_kd  = sum_j (+u_jd if bit k of ck_j else -u_jd)       H^T U: additions of value rows
    g_k   = sum_j (+w_j or -w_j);  vs_d = sum_j u_jd;  ws = sum_j w_j
    num_id = fl(sum_k (+G_kd if bit k of cq_i else -G_kd) + fl(c * vs_d))
    den_i  = fl(sum_k (+g_k or -g_k) + fl(c * ws))
    out_i  = fl(num_i * fl(1 / den_i))
which is ``sum_j w_j (s_ij + c) v_j / sum_j w_j (s_ij + c)``: :func:`kernel_reference`
computes it that way (O(S T)); both give the same numbers exactly when every partial sum is an
integer below 2**24 (integer values, no bias), and agree to float32 rounding otherwise.

ONNX (domain ``edgert``): ``BinaryAttention(CodesQ: uint [..., H, S], CodesK: uint [..., H, T],
V: float32 [..., H, T, Dv], Temperature: float32 [Hp] (optional; required by the quadratic
form), Bias: float32 (optional; broadcast to [..., H, S, T]; the linear form needs size 1 on
the S axis)) -> float32 [..., H, S, Dv]``; attributes ``bits`` (8, 16, 32: the codes' dtype
uint8/16/32) and ``form`` (``quadratic`` or ``linear``). CodesQ, CodesK and V share their
leading dims.
"""

from __future__ import annotations

import numpy as np

from edgert.ops._common.op import Example
from edgert.ops._floatmath import exp_neg
from edgert.ops.hash_codes.spec import code_dtype

OP_TYPE = "BinaryAttention"
FORMS = ("quadratic", "linear")


def check_form(form: str) -> str:
    """``form`` as given; ValueError for another."""
    if form not in FORMS:
        raise ValueError(f"BinaryAttention form must be one of {list(FORMS)}, got {form!r}")
    return form


def check_inputs(cq: np.ndarray, ck: np.ndarray, v: np.ndarray, temperature: np.ndarray | None,
                 bias: np.ndarray | None, bits: int, form: str) -> None:
    """Raise on dtypes or shapes the kernels do not take."""
    check_form(form)
    want = code_dtype(bits)
    if cq.dtype != want or ck.dtype != want:
        raise TypeError(f"BinaryAttention codes must be {want} for bits={bits}, got {cq.dtype} "
                        f"and {ck.dtype}")
    if v.dtype != np.float32 or v.ndim < 3 or cq.ndim != v.ndim - 1 or ck.shape != v.shape[:-1] \
            or cq.shape[:-1] != v.shape[:-2]:
        raise ValueError(f"BinaryAttention needs codes [..., H, S], [..., H, T] and float32 V "
                         f"[..., H, T, Dv]; got {cq.shape}, {ck.shape}, {v.dtype} {v.shape}")
    if form == "quadratic" and temperature is None:
        raise ValueError("BinaryAttention quadratic form needs a Temperature input")
    if temperature is not None and (temperature.dtype != np.float32 or temperature.ndim != 1
                                    or temperature.shape[0] not in (1, v.shape[-3])):
        raise ValueError(f"BinaryAttention Temperature must be float32 [H] or [1], got "
                         f"{temperature.dtype} {temperature.shape}")
    if bias is not None:
        full = (*cq.shape, ck.shape[-1])
        if bias.dtype != np.float32 or bias.ndim != len(full) or any(
                b not in (1, f) for b, f in zip(bias.shape, full)):
            raise ValueError(f"BinaryAttention Bias must be float32 broadcasting to {full}, "
                             f"got {bias.dtype} {bias.shape}")
        if form == "linear" and bias.shape[-2] != 1:
            raise ValueError(f"BinaryAttention linear form takes a bias per key (size 1 on the "
                             f"query axis), got {bias.shape}")


def scores(cq: np.ndarray, ck: np.ndarray, bits: int) -> np.ndarray:
    """int32 [..., H, S, T]: ``b - 2 popcount(cq_i xor ck_j)`` (the +/-1 dot products)."""
    x = np.bitwise_xor(np.asarray(cq)[..., :, None], np.asarray(ck)[..., None, :])
    return (int(bits) - 2 * np.bitwise_count(x).astype(np.int32)).astype(np.int32)


def _temp(temperature: np.ndarray, ndim: int) -> np.ndarray:
    """[Hp] shaped to broadcast against [..., H, S, T] of rank ndim."""
    return temperature.reshape((1,) * (ndim - 3) + (temperature.shape[0], 1, 1))


def quadratic(cq: np.ndarray, ck: np.ndarray, v: np.ndarray, temperature: np.ndarray,
              bias: np.ndarray | None, bits: int) -> np.ndarray:
    """The quadratic form (module docstring)."""
    s = scores(cq, ck, bits).astype(np.float32)
    logits = _temp(temperature, s.ndim) * s
    if bias is not None:
        logits = logits + bias
    e = exp_neg(logits - logits.max(-1, keepdims=True))
    den = np.zeros(e.shape[:-1], np.float32)
    num = np.zeros((*e.shape[:-1], v.shape[-1]), np.float32)
    for j in range(e.shape[-1]):
        den = den + e[..., j]
        num = num + e[..., j, None] * v[..., None, j, :]
    return num * (np.float32(1) / den)[..., None]


def _signed(codes: np.ndarray, k: int) -> np.ndarray:
    """True where bit ``k`` of each code is set (+1)."""
    return ((codes >> codes.dtype.type(k)) & codes.dtype.type(1)).astype(bool)


def key_weights(v: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """w_j of the linear form: float32 [..., H, T] (1 without a bias)."""
    if bias is None:
        return np.ones(v.shape[:-1], np.float32)
    return np.broadcast_to(exp_neg(bias[..., 0, :]), v.shape[:-1]).astype(np.float32)


def linear(cq: np.ndarray, ck: np.ndarray, v: np.ndarray, bias: np.ndarray | None,
           bits: int) -> np.ndarray:
    """The linear form (module docstring)."""
    c = np.float32(bits + 1)
    w = key_weights(v, bias)
    u = v if bias is None else w[..., None] * v
    lead = v.shape[:-2]
    g_mat = np.zeros((*lead, bits, v.shape[-1]), np.float32)
    g = np.zeros((*lead, bits), np.float32)
    vs = np.zeros((*lead, v.shape[-1]), np.float32)
    ws = np.zeros(lead, np.float32)
    for j in range(v.shape[-2]):
        for k in range(bits):
            plus = _signed(ck[..., j], k)
            g_mat[..., k, :] = g_mat[..., k, :] + np.where(plus[..., None], u[..., j, :],
                                                           -u[..., j, :])
            g[..., k] = g[..., k] + np.where(plus, w[..., j], -w[..., j])
        vs = vs + u[..., j, :]
        ws = ws + w[..., j]
    num = np.zeros((*cq.shape, v.shape[-1]), np.float32)
    den = np.zeros(cq.shape, np.float32)
    for k in range(bits):
        plus = _signed(cq, k)
        num = num + np.where(plus[..., None], g_mat[..., None, k, :], -g_mat[..., None, k, :])
        den = den + np.where(plus, g[..., None, k], -g[..., None, k])
    num = num + (c * vs)[..., None, :]
    den = den + (c * ws)[..., None]
    return num * (np.float32(1) / den)[..., None]


def kernel_reference(cq: np.ndarray, ck: np.ndarray, v: np.ndarray, bias: np.ndarray | None,
                     bits: int) -> np.ndarray:
    """The linear form's attention computed quadratically: ``num_i = sum_j fl(fl(w_j (s_ij + c))
    v_j)``, ``den_i = sum_j fl(w_j (s_ij + c))``, ``out_i = num_i * (1 / den_i)`` (float32, j
    ascending). Equal to :func:`linear` when every partial sum is an integer below 2**24."""
    k = (scores(cq, ck, bits) + (bits + 1)).astype(np.float32)
    w = key_weights(v, bias)
    k = k * w[..., None, :]
    den = np.zeros(k.shape[:-1], np.float32)
    num = np.zeros((*k.shape[:-1], v.shape[-1]), np.float32)
    for j in range(k.shape[-1]):
        den = den + k[..., j]
        num = num + k[..., j, None] * v[..., None, j, :]
    return num * (np.float32(1) / den)[..., None]


def reference(cq: np.ndarray, ck: np.ndarray, v: np.ndarray, temperature: np.ndarray | None = None,
              bias: np.ndarray | None = None, *, bits: int, form: str = "quadratic"
              ) -> np.ndarray:
    """Normative numpy BinaryAttention.

    Args:
        cq: codes of the queries, uint8/16/32 [..., H, S].
        ck: codes of the keys, same dtype, [..., H, T].
        v: float32 [..., H, T, Dv].
        temperature: float32 [H] or [1] (quadratic form; ignored by the linear form).
        bias: optional float32, broadcast to [..., H, S, T] (linear: size 1 on the S axis).
        bits: b, the code width.
        form: ``quadratic`` or ``linear``.

    Returns:
        float32 [..., H, S, Dv].
    """
    arrays = [None if a is None else np.asarray(a) for a in (cq, ck, v, temperature, bias)]
    cq, ck, v, temperature, bias = arrays
    check_inputs(cq, ck, v, temperature, bias, bits, form)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if form == "quadratic":
            return quadratic(cq, ck, v, temperature, bias, bits)
        return linear(cq, ck, v, bias, bits)


def random_codes(rng: np.random.Generator, shape: tuple[int, ...], bits: int) -> np.ndarray:
    """Uniformly random codes of ``bits`` bits."""
    dtype = code_dtype(bits)
    return rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)


def example(rng: np.random.Generator) -> Example:
    """Quadratic form, 16-bit codes: [2, 2, 5] queries, [2, 2, 6] keys, V [2, 2, 6, 4], a
    key-padding bias [2, 1, 1, 6]."""
    cq, ck = random_codes(rng, (2, 2, 5), 16), random_codes(rng, (2, 2, 6), 16)
    v = rng.standard_normal((2, 2, 6, 4)).astype(np.float32)
    temp = rng.uniform(0.1, 0.4, 2).astype(np.float32)
    bias = np.where(rng.random((2, 1, 1, 6)) < 0.3, -1e4, 0).astype(np.float32)
    return Example((cq, ck, v, temp, bias), {"bits": 16, "form": "quadratic"})
