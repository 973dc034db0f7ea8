"""Requant: parameters, accuracy against float rescaling, numpy == numba == TVM bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from edgert.ops import requant

from ophelpers import assert_bit_exact, run_te

RATIOS = [2.0**-31, 1e-6, 0.0123, 0.5, 0.7071, 1.0, 3.3, 2.0**29]


@pytest.mark.parametrize("ratio", RATIOS)
def test_params_represent_the_ratio(ratio):
    m, e = requant.params(ratio)
    assert 2**30 <= int(m) <= 2**31 and 1 <= int(e) <= 62
    assert abs(int(m) / 2.0 ** int(e) / ratio - 1) <= 2.0**-31


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), 2.0**30, -(2.0**30)])
def test_params_refuse_bad_ratios(bad):
    with pytest.raises(ValueError):
        requant.params(bad)


def test_ratios_below_two_to_minus_32_are_exactly_zero():
    """|q * r| < 1/2 for every int32 q when |r| < 2**-32: rounding gives 0, so m = 0 is exact."""
    m, e = requant.params(np.array([2.0**-33, -1.5e-34]))
    assert m.tolist() == [0, 0]
    q = np.array([2**31 - 1, -(2**31)], np.int64)
    assert (np.floor(q * 2.0**-33 + 0.5) == 0).all()
    np.testing.assert_array_equal(requant.reference(q.astype(np.int32), m[:1], e[:1], lo=-128,
                                                    hi=127), [0, 0])


def test_negative_and_zero_ratios():
    """A negative ratio (LayerNorm gamma < 0 folded in) negates the result exactly: round half
    up of -q*r equals -(round half down of q*r); a zero ratio gives 0."""
    m, e = requant.params(np.array([-0.5, 0.0, 0.5]))
    assert int(m[0]) == -int(m[2]) and (int(m[1]), int(e[1])) == (0, 1)
    q = np.array([[-5, 7, 3], [4, -9, -3]], np.int32)
    out = requant.reference(q, m, e, lo=-128, hi=127)
    np.testing.assert_array_equal(out, [[3, 0, 2], [-2, 0, -1]])   # 2.5 -> 3, 1.5 -> 2, -1.5 -> -1


def test_reference_rounds_half_up_and_clamps():
    m, e = requant.params(0.5)
    q = np.array([-5, -4, -3, -1, 0, 1, 3, 5, 1000, -1000], np.int32)
    out = requant.reference(q, m, e, lo=-128, hi=127)
    # q/2 rounded half up: -2.5 -> -2, -1.5 -> -1, -0.5 -> 0, 0.5 -> 1, 1.5 -> 2, 2.5 -> 3
    np.testing.assert_array_equal(out, [-2, -2, -1, 0, 0, 1, 2, 3, 127, -128])
    assert out.dtype == np.int8


def test_accuracy_against_float_rescale():
    rng = np.random.default_rng(0)
    q = rng.integers(-(2**31) + 1, 2**31 - 1, size=20000, dtype=np.int64).astype(np.int32)
    for ratio in [1e-7, 3.1e-5, 0.002]:
        m, e = requant.params(ratio)
        out = requant.reference(q, m, e, lo=-(2**31), hi=2**31 - 1, to="int32")
        exact = q.astype(np.float64) * ratio
        # Error = rounding (<= 0.5) + multiplier error (|q| * ratio * 2**-31 < 1).
        assert np.abs(out - exact).max() <= 0.5 + 1.0


CASES = {
    "per_tensor_int32_to_int8": (np.int32, (4, 7, 33), "int8", False),
    "per_channel_int32_to_int8": (np.int32, (3, 5, 16), "int8", True),
    "per_channel_int32_to_int16": (np.int32, (2, 64), "int16", True),
    "int16_to_int8": (np.int16, (9, 31), "int8", False),
    "int8_to_int32": (np.int8, (5, 8), "int32", True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_backends_bit_exact(case):
    dtype, shape, out_dtype, per_channel = CASES[case]
    rng = np.random.default_rng(1)
    info = np.iinfo(dtype)
    q = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    q.reshape(-1)[:4] = [info.min, info.max, 0, -1]  # saturating and edge values
    channels = shape[-1] if per_channel else 1
    ratios = rng.uniform(1e-5, 2.0, channels) * rng.choice([-1, 1], channels)
    m, e = requant.params(ratios)
    lo, hi = int(np.iinfo(out_dtype).min), int(np.iinfo(out_dtype).max)
    want = requant.reference(q, m, e, lo=lo, hi=hi, to=out_dtype)
    assert_bit_exact("numba", requant.numba_kernel(q, m, e, lo=lo, hi=hi, to=out_dtype), want)
    got = run_te(requant.te_compute, [q, m, e], lo=lo, hi=hi, to=out_dtype)
    assert_bit_exact("tvm", got, want)
    m32, e32 = requant.narrow(m, e)
    assert m32.dtype == np.int32
    got = run_te(requant.te_compute, [q, m32, e32], lo=lo, hi=hi, to=out_dtype)
    assert_bit_exact("tvm-int32-multiplier", got, want)


def test_narrow_multiplier_is_the_same_requant():
    """m = 2**31 (mantissa rounding up) becomes (2**30, e - 1); results are identical on the
    extreme inputs; with e = 1 there is no int32 form."""
    q = np.array([-(2**31), -(2**31) + 1, -3, -1, 0, 1, 2, 3, 2**31 - 1], np.int64)
    m, e = np.array([2**31, -(2**31), 2**31 - 1, 0]), np.array([40, 33, 31, 1])
    m32, e32 = requant.narrow(m, e)
    np.testing.assert_array_equal(m32, [2**30, -(2**31), 2**31 - 1, 0])
    np.testing.assert_array_equal(e32, [39, 33, 31, 1])
    for i in range(len(m)):
        full = requant.reference(q, m[i:i + 1], e[i:i + 1], lo=-(2**31), hi=2**31 - 1, to="int32")
        narrowed = requant.reference(q, m32[i:i + 1], e32[i:i + 1], lo=-(2**31), hi=2**31 - 1,
                                     to="int32")
        assert_bit_exact(f"channel {i}", narrowed, full)
    assert requant.narrow(np.array([2**31]), np.array([1])) is None


def test_relu_clamp():
    m, e = requant.params(1.0)
    q = np.arange(-10, 10, dtype=np.int32)
    out = requant.reference(q, m, e, lo=0, hi=127)
    np.testing.assert_array_equal(out, np.maximum(q, 0))
    assert_bit_exact("numba", requant.numba_kernel(q, m, e, lo=0, hi=127), out)


@pytest.mark.parametrize("axis", [0, 1, -2])
def test_per_channel_along_another_axis(axis):
    """``axis`` picks the channel axis (e.g. 1 for an NCHW convolution accumulator)."""
    rng = np.random.default_rng(3)
    q = rng.integers(-(2**20), 2**20, size=(2, 5, 3, 4)).astype(np.int32)
    ratios = rng.uniform(1e-5, 1e-3, q.shape[axis])
    m, e = requant.params(ratios)
    want = requant.reference(q, m, e, lo=-128, hi=127, axis=axis)
    shape = [1] * 4
    shape[axis] = -1
    exact = np.floor(q * ratios.reshape(shape) + 0.5)
    assert np.abs(want - np.clip(exact, -128, 127)).max() <= 1
    assert_bit_exact("numba", requant.numba_kernel(q, m, e, lo=-128, hi=127, axis=axis), want)
    assert_bit_exact("tvm", run_te(requant.te_compute, [q, m, e], lo=-128, hi=127, axis=axis), want)
