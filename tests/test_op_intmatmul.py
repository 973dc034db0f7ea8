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


def test_accumulator_bound_is_attained_and_overflow_raises():
    rng = np.random.default_rng(1)
    w = _operand(rng, (600, 3), np.int8)
    a_max = 32767
    bound = intmatmul.accumulator_bound(a_max, w)
    col = int(np.argmax(np.abs(w.astype(np.int64)).sum(axis=0)))
    a = (np.sign(w[:, col]).astype(np.int64) * a_max).astype(np.int16)[None, :]
    exact = np.matmul(a.astype(np.int64), w.astype(np.int64))
    assert int(np.abs(exact).max()) == bound            # the bound is reached by this input
    if bound > intmatmul.INT32_MAX:
        with pytest.raises(OverflowError):
            intmatmul.reference(a, w)
    assert intmatmul.accumulator_bound(10, w, bias=np.full(3, 5)) == 10 * int(
        np.abs(w.astype(np.int64)).sum(axis=0).max()) + 5


def test_refuses_bad_operands():
    with pytest.raises(TypeError):
        intmatmul.reference(np.zeros((2, 2), np.int32), np.zeros((2, 2), np.int8))
    with pytest.raises(ValueError):
        intmatmul.reference(np.zeros((2, 3), np.int8), np.zeros((2, 2), np.int8))
