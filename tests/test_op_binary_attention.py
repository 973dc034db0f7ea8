"""``edgert.HashCodes`` and ``edgert.BinaryAttention``: the pinned float32 exponential, the
codes and the popcount scores bit for bit on every backend, both attention forms bit for bit,
the linear form against the quadratic computation of its kernel, the float models, and the
``popcnt`` instruction in the x86 kernel.

- numpy spec == numba == TVM (the scheduled kernels the converters emit) bit for bit: codes
  (8, 16, 32 bits; per-head and shared parameters; zero vectors), integer scores, and the float
  outputs of both forms (the accumulation order is part of the spec, every product is fenced
  against FMA contraction), on shapes that take every schedule path (vectorized value columns
  of 8 and 4 lanes, a scalar remainder, biases broadcast over heads or queries).
- The linear form equals :func:`kernel_reference` (the same kernel ``w_j (s_ij + b + 1)``
  computed quadratically) exactly on random codes with integer values and 0 / -1e4 masks, and
  within the stated float32 bound on normal values.
- Float models: the codes are the signs of the float64 projections (wherever those are not
  within rounding of 0); the quadratic form is softmax(temperature * s + bias) V in float64
  within the stated bound.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgert.ops import binary_attention as BA
from edgert.ops import hash_codes as HC
from edgert.ops._floatmath import exp_neg
from edgert.ops._floatmath.spec import EXP_MAX, EXP_MIN

from ophelpers import assert_bit_exact

EXP_REL_PIN = 2.62e-7
"""Largest relative error of ``exp_neg`` on [-87, 88]: measured 2.37e-7 on these 2e5 points
(2.38e-7 on 3e5), pinned with 10% slack (the spec states 4e-7)."""


def _bits_equal(name: str, got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, (name, got.shape, want.shape)
    if got.dtype == np.float32:
        got, want = got.view(np.uint32), want.view(np.uint32)
    assert_bit_exact(name, got, want)


def _build(compute, arrays: list, schedule=None, target: dict | None = None):
    """TE compute on placeholders of ``arrays`` (None: absent input), optionally scheduled,
    built for ``target`` (default: this machine)."""
    import tvm
    from tvm import te

    from edgert.targets import resolve_host

    phs = [None if a is None else te.placeholder(a.shape, str(a.dtype), f"in{i}")
           for i, a in enumerate(arrays)]
    out = compute(*phs)
    func = te.create_prim_func([p for p in phs if p is not None] + [out])
    if schedule is not None:
        func = schedule(func)
    lib = tvm.compile(func, target=tvm.target.Target(target or resolve_host().tvm_target_dict()))
    return lib, [int(d) for d in out.shape], str(out.dtype)


def _run(compute, arrays: list, schedule=None) -> np.ndarray:
    import tvm

    lib, shape, dtype = _build(compute, arrays, schedule)
    res = tvm.runtime.tensor(np.zeros(shape, dtype))
    lib(*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays if a is not None], res)
    return res.numpy()


# ---------------------------------------------------------------- the pinned exponential


def test_exp_neg_is_the_same_everywhere_and_close_to_exp():
    from numba import njit

    from edgert.ops._floatmath.numba import exp_neg_nb
    from edgert.ops._floatmath.tvm import exp_neg_tir
    from tvm import te

    rng = np.random.default_rng(0)
    t = np.concatenate([rng.uniform(-90, 0, 100_000), rng.uniform(-1, 0, 50_000),
                        rng.uniform(0, 89, 50_000),
                        [EXP_MIN, np.nextafter(EXP_MIN, -1), 0, -0.0, EXP_MAX, 100, -1e30]])
    t = t.astype(np.float32)
    want = exp_neg(t)

    @njit(cache=False)
    def loop(x):
        out = np.empty_like(x)
        for i in range(x.size):
            out[i] = exp_neg_nb(x[i])
        return out

    _bits_equal("numba", loop(t), want)
    _bits_equal("tvm", _run(lambda x: te.compute(x.shape, lambda i: exp_neg_tir(x[i])), [t]), want)
    inside = (t >= EXP_MIN) & (t <= EXP_MAX)
    rel = np.abs(want[inside] / np.exp(t[inside].astype(np.float64)) - 1)
    print(f"\nexp_neg: largest relative error {rel.max():.3e} on [-87, 88]")
    assert rel.max() <= EXP_REL_PIN
    assert (want[t < EXP_MIN] == 0).all() and want[t == 0][0] == 1.0


# ---------------------------------------------------------------- HashCodes

HASH_CASES = [((2, 3, 7, 16), 3, 16), ((3, 5, 8), 1, 8), ((1, 2, 33, 64), 2, 32),
              ((2, 4, 9, 12), 1, 16)]


def _hash_inputs(rng, shape, heads, bits, m=25):
    x = rng.standard_normal(shape).astype(np.float32)
    x[..., 0, :] = 0                                    # zero vectors: norm 1 by definition
    return [x, *HC.random_params(rng, heads, shape[-1], bits, m)]


@pytest.mark.parametrize("shape,heads,bits", HASH_CASES)
def test_hash_codes_backends_bit_exact(shape, heads, bits):
    from edgert.ops.hash_codes.tvm import schedule, te_compute

    arrays = _hash_inputs(np.random.default_rng(bits + len(shape)), shape, heads, bits)
    want = HC.reference(*arrays, bits=bits)
    assert want.dtype == HC.code_dtype(bits) and want.shape == shape[:-1]
    assert len(np.unique(want)) >= 10                     # the codes do vary
    _bits_equal("numba", HC.numba_kernel(*arrays, bits=bits), want)
    got = _run(lambda *t: te_compute(*t, bits=bits), arrays, schedule)
    _bits_equal("tvm", got, want)


def test_codes_are_the_signs_of_the_float64_projections():
    """The float model of the hash, in float64 with numpy's exp: its signs are the codes
    wherever a projection is not within 1e-4 of 0 (the float32 roundings stay far below)."""
    rng = np.random.default_rng(7)
    x, anchors, gamma, mean, proj = _hash_inputs(rng, (4, 2, 50, 16), 2, 16)
    x64 = x.astype(np.float64)
    nrm = np.linalg.norm(x64, axis=-1, keepdims=True)
    xh = x64 / np.where(nrm == 0, 1, nrm)
    dist = ((xh[..., None, :] - anchors[None, :, None].astype(np.float64)) ** 2).sum(-1)
    feat = np.exp(-dist * gamma[None, :, None, None]) - mean[None, :, None, :]
    p = np.einsum("hbm,nhsm->nhsb", proj.astype(np.float64), feat)
    codes = HC.reference(x, anchors, gamma, mean, proj, bits=16)
    plus = HC.unpack(codes, 16) > 0
    clear = np.abs(p) > 1e-4
    assert clear.mean() > 0.99
    assert np.array_equal(plus[clear], (p >= 0)[clear])


def test_codes_ignore_a_positive_scale():
    """Scaling by a power of two changes no rounding: the codes are the same bits (the
    attention's 1/sqrt(d) may sit before the hash)."""
    rng = np.random.default_rng(3)
    x, *params = _hash_inputs(rng, (2, 2, 20, 8), 2, 16)
    want = HC.reference(x, *params, bits=16)
    for s in (0.125, 4.0):
        assert np.array_equal(HC.reference(x * np.float32(s), *params, bits=16), want)
    flipped = HC.reference(-x, *params, bits=16)
    assert not np.array_equal(flipped, want)


# ---------------------------------------------------------------- scores


@pytest.mark.parametrize("bits", [8, 16, 32])
def test_scores_are_the_pm1_dot_products_on_every_backend(bits):
    from edgert.ops.binary_attention.numba import numba_scores
    from edgert.ops.binary_attention.tvm import te_scores

    rng = np.random.default_rng(bits)
    cq, ck = BA.random_codes(rng, (2, 3, 11), bits), BA.random_codes(rng, (2, 3, 13), bits)
    want = BA.scores(cq, ck, bits)
    dots = np.einsum("nhsk,nhtk->nhst", HC.unpack(cq, bits), HC.unpack(ck, bits))
    assert want.dtype == np.int32 and np.array_equal(want, dots)
    assert want.min() >= -bits and want.max() <= bits and (want % 2 == bits % 2).all()
    _bits_equal("numba", numba_scores(cq, ck, bits), want)
    _bits_equal("tvm", _run(lambda a, b: te_scores(a, b, bits=bits), [cq, ck]), want)


# ---------------------------------------------------------------- BinaryAttention

# (bits, [N, H, S, T, Dv], bias shape or None, temperature heads): value columns of 8 lanes,
# 4 lanes and a scalar 5; biases per key, per head and per query.
ATTN_CASES = [
    (16, (2, 3, 7, 9, 5), None, 3),
    (8, (2, 2, 17, 17, 8), (2, 1, 1, 17), 2),
    (32, (1, 2, 6, 6, 16), (1, 2, 6, 6), 1),
    (16, (2, 4, 40, 33, 12), (2, 4, 1, 33), 4),
]


def _attn_inputs(rng, bits, dims, bias_shape, temp_heads, integer=False):
    n, h, s, t, dv = dims
    cq, ck = BA.random_codes(rng, (n, h, s), bits), BA.random_codes(rng, (n, h, t), bits)
    v = (rng.integers(-8, 9, (n, h, t, dv)) if integer else rng.standard_normal((n, h, t, dv)))
    temp = rng.uniform(0.05, 0.5, temp_heads).astype(np.float32)
    bias = None
    if bias_shape is not None:
        mask = rng.random(bias_shape) < 0.3
        soft = rng.standard_normal(bias_shape) if not integer else np.zeros(bias_shape)
        bias = np.where(mask, -1e4, soft).astype(np.float32)
        bias[..., 0] = 0                                   # no row is fully masked
    return [cq, ck, v.astype(np.float32), temp, bias]


@pytest.mark.parametrize("form", ["quadratic", "linear"])
@pytest.mark.parametrize("bits,dims,bias_shape,temp_heads", ATTN_CASES)
def test_attention_backends_bit_exact(form, bits, dims, bias_shape, temp_heads):
    from edgert.ops.binary_attention.tvm import schedule, te_compute

    if form == "linear" and bias_shape is not None and bias_shape[2] != 1:
        pytest.skip("the linear form takes a bias per key only (check_inputs refuses this one)")
    arrays = _attn_inputs(np.random.default_rng(bits + dims[3]), bits, dims, bias_shape,
                          temp_heads)
    want = BA.reference(*arrays, bits=bits, form=form)
    assert want.shape == (*dims[:3], dims[4]) and np.isfinite(want).all()
    _bits_equal("numba", BA.numba_kernel(*arrays, bits=bits, form=form), want)
    has_bias = arrays[4] is not None
    got = _run(lambda *t: te_compute(*t, bits=bits, form=form), arrays,
               lambda f: schedule(f, form, has_bias))
    _bits_equal("tvm", got, want)


def test_quadratic_form_is_the_softmax_of_the_scores():
    """Float64 model: softmax(temperature * s + bias) @ V; stated bound 2e-6 relative to
    max |V| (float32 roundings of T = 33 terms and the pinned exp)."""
    arrays = _attn_inputs(np.random.default_rng(11), 16, (2, 4, 40, 33, 12), (2, 4, 1, 33), 4)
    cq, ck, v, temp, bias = arrays
    logits = temp[None, :, None, None].astype(np.float64) * BA.scores(cq, ck, 16) + bias
    p = np.exp(logits - logits.max(-1, keepdims=True))
    want = (p / p.sum(-1, keepdims=True)) @ v.astype(np.float64)
    got = BA.reference(*arrays, bits=16, form="quadratic")
    err = np.abs(got - want).max() / np.abs(v).max()
    print(f"\nquadratic form vs float64 softmax: {err:.2e} of max |V|")
    assert err <= 2e-6


@pytest.mark.parametrize("bias_shape", [None, (3, 1, 1, 29), (3, 2, 1, 29)])
def test_linear_form_equals_the_quadratic_kernel_exactly(bias_shape):
    """Integer values and 0 / -1e4 masks (weights exp(0) = 1 and exp(-1e4) = 0): every partial
    sum is an integer, so the O(S + T) linear form and the O(S T) kernel give the same bits;
    with normal values they agree within 1e-5 of max |V| (float32 roundings)."""
    rng = np.random.default_rng(5)
    for bits in (8, 16, 32):
        cq, ck, v, _, bias = _attn_inputs(rng, bits, (3, 2, 21, 29, 6), bias_shape, 1, True)
        lin = BA.reference(cq, ck, v, None, bias, bits=bits, form="linear")
        _bits_equal(f"linear vs kernel, {bits} bits",
                    lin, BA.kernel_reference(cq, ck, v, bias, bits))
        vf = rng.standard_normal(v.shape).astype(np.float32)
        lin = BA.reference(cq, ck, vf, None, bias, bits=bits, form="linear")
        err = np.abs(lin - BA.kernel_reference(cq, ck, vf, bias, bits)).max()
        assert 0 < err <= 1e-5 * np.abs(vf).max() or err == 0


def test_inputs_the_kernels_refuse():
    rng = np.random.default_rng(0)
    cq, ck, v, temp, _ = _attn_inputs(rng, 16, (1, 2, 4, 5, 3), None, 2)
    with pytest.raises(ValueError, match="bias per key"):
        BA.reference(cq, ck, v, temp, np.zeros((1, 2, 4, 5), np.float32), bits=16, form="linear")
    with pytest.raises(ValueError, match="needs a Temperature"):
        BA.reference(cq, ck, v, None, bits=16, form="quadratic")
    with pytest.raises(TypeError, match="uint8"):
        BA.reference(cq, ck, v, temp, bits=8)
    with pytest.raises(ValueError, match="form must be one of"):
        BA.reference(cq, ck, v, temp, bits=16, form="cubic")
    x, *params = _hash_inputs(rng, (1, 2, 4, 8), 2, 16)
    with pytest.raises(ValueError, match="Proj must have shape"):
        HC.reference(x, *params[:3], params[3][:, :8], bits=16)


def test_counts_have_no_multiply_in_the_scores():
    from edgert.ops.binary_attention.counts import SCORE

    assert SCORE.popcounts == 1 and SCORE.fp32_mul == SCORE.int32_mul == SCORE.int8_mul == 0
    shapes = [(2, 4, 17), (2, 4, 17), (2, 4, 17, 8), (4,), None]
    dtypes = [np.uint16, np.uint16, np.float32, np.float32, None]
    quad = BA.OP.counts(shapes, dtypes, {"bits": 16, "form": "quadratic"})
    lin = BA.OP.counts(shapes, dtypes, {"bits": 16, "form": "linear"})
    assert quad.popcounts == 2 * 4 * 17 * 17 and lin.popcounts == 0
    assert lin.fp32_mul < quad.fp32_mul / 10                 # no products of scores and V


# ---------------------------------------------------------------- the popcount instruction


def _cpu_flags() -> set[str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    found = re.search(r"^flags\s*:(.*)$", text, re.M)
    return set(found.group(1).split()) if found else set()


@pytest.mark.parametrize("isa", ["popcnt", "avx512_vpopcntdq"])
def test_x86_kernel_uses_a_popcount_instruction(isa, tmp_path):
    """The quadratic kernel built for this x86 machine (the shared library TVM writes),
    disassembled: its scores use the CPU's popcount instruction, not a bit-twiddling
    emulation."""
    import platform

    flags = _cpu_flags()
    if platform.machine() != "x86_64":
        pytest.skip(f"this machine is {platform.machine()}, not x86-64")
    if isa not in flags:
        pytest.skip(f"this CPU has no {isa.upper()} (/proc/cpuinfo flags): the path that "
                    f"needs it cannot be built and run here")
    from edgert.ops.binary_attention.tvm import schedule, te_compute
    from edgert.targets import resolve_host

    target = resolve_host().tvm_target_dict()
    if isa == "avx512_vpopcntdq":
        target = {**target, "mattr": [*target.get("mattr", []), "+avx512vpopcntdq"]}
    arrays = _attn_inputs(np.random.default_rng(0), 32, (2, 4, 64, 64, 8), None, 4)
    lib, _, _ = _build(lambda *t: te_compute(*t, bits=32, form="quadratic"), arrays,
                       lambda f: schedule(f, "quadratic", False), target)
    so = tmp_path / "kernel.so"
    lib.export_library(str(so))
    asm = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(so)], check=True,
                         capture_output=True, text=True).stdout
    found = re.findall(r"\t(v?popcnt[dqw]?)\s", asm)
    print(f"\n{isa}: popcount instructions in the kernel: {sorted(set(found))} x {len(found)}")
    assert found, "no popcnt / vpopcnt instruction in the built kernel"
