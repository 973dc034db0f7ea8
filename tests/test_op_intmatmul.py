"""IntMatMul: numpy == numba == TVM bit for bit; the accumulator bound is tight and enforced."""

from __future__ import annotations

import numpy as np
import pytest

from edgert.ops import intmatmul

from ophelpers import assert_bit_exact, run_te

CASES = {  # name: (a shape, a dtype, b shape, b dtype)
    "dense_int8": ((7, 33), np.int8, (33, 5), np.int8),
    "batched_weights_2d": ((2, 9, 16), np.int8, (16, 12), np.int8),
    "attention_scores": ((2, 4, 17, 8), np.int8, (2, 4, 8, 17), np.int8),
    "probs_int16_x_v": ((1, 4, 17, 17), np.int16, (1, 4, 17, 8), np.int8),
    "broadcast_b_batch": ((3, 4, 6), np.int16, (1, 6, 5), np.int16),
}


def _operand(rng, shape, dtype, scale=1.0):
    info = np.iinfo(dtype)
    hi = int(info.max * scale)
    return rng.integers(-hi, hi, size=shape, endpoint=True).astype(dtype)


@pytest.mark.parametrize("case", list(CASES))
def test_backends_bit_exact(case):
    a_shape, a_dt, b_shape, b_dt = CASES[case]
    rng = np.random.default_rng(0)
    # int16 x int16 products need smaller values to keep K-long sums in int32
    scale = 0.05 if a_dt == b_dt == np.int16 else 1.0
    a, b = _operand(rng, a_shape, a_dt, scale), _operand(rng, b_shape, b_dt, scale)
    a.reshape(-1)[:2] = [np.iinfo(a_dt).min if scale == 1.0 else 0, 0]
    want = intmatmul.reference(a, b)
    np.testing.assert_array_equal(want, np.matmul(a.astype(np.int64), b.astype(np.int64)))
    assert_bit_exact("numba", intmatmul.numba_kernel(a, b), want)
    assert_bit_exact("tvm", run_te(intmatmul.te_compute, [a, b]), want)


def test_accumulator_bound_is_attained():
    """The bound is tight: the input with the sign of the largest column's weights reaches it."""
    rng = np.random.default_rng(1)
    w = _operand(rng, (600, 3), np.int8)
    a_max = 32767
    bound = intmatmul.accumulator_bound(a_max, w)
    col = int(np.argmax(np.abs(w.astype(np.int64)).sum(axis=0)))
    a = (np.sign(w[:, col]).astype(np.int64) * a_max).astype(np.int16)[None, :]
    exact = np.matmul(a.astype(np.int64), w.astype(np.int64))
    assert int(np.abs(exact).max()) == bound            # the bound is reached by this input
    assert intmatmul.accumulator_bound(10, w, bias=np.full(3, 5)) == 10 * int(
        np.abs(w.astype(np.int64)).sum(axis=0).max()) + 5


def test_accumulator_past_int32_raises_and_at_int32_max_does_not():
    """K = 600 int16 inputs at 32767 against int8 weights at +-127: the bound 32767 * 127 * 600
    = 2,496,845,400 exceeds int32, the input reaching it makes the reference raise; one
    accumulator exactly at INT32_MAX (2 * 32767**2 + 4 * 32767 + 1) passes, one past it raises."""
    w = np.where(np.arange(600) % 3 == 0, -127, 127).astype(np.int8)[:, None]
    bound = intmatmul.accumulator_bound(32767, w)
    assert bound == 32767 * 127 * 600 > intmatmul.INT32_MAX
    a = (np.sign(w[:, 0]).astype(np.int16) * 32767)[None, :]
    with pytest.raises(OverflowError, match="exceeds int32"):
        intmatmul.reference(a, w)
    b = np.array([[32767], [32767], [1], [1], [1], [1], [1]], np.int16)
    a = np.full((1, 7), 32767, np.int16)
    a[0, -1] = 1
    assert int(intmatmul.reference(a, b)[0, 0]) == intmatmul.INT32_MAX
    a[0, -1] = 2
    with pytest.raises(OverflowError, match="exceeds int32"):
        intmatmul.reference(a, b)
    with pytest.raises(OverflowError, match="exceeds int32"):
        intmatmul.reference(-a, b)                      # the negative side alike


def test_refuses_bad_operands():
    with pytest.raises(TypeError):
        intmatmul.reference(np.zeros((2, 2), np.int32), np.zeros((2, 2), np.int8))
    with pytest.raises(ValueError):
        intmatmul.reference(np.zeros((2, 3), np.int8), np.zeros((2, 2), np.int8))
