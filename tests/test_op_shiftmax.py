"""Shiftmax: range checks, accuracy against float softmax, numpy == numba == TVM bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from edgert.ops import shiftmax

from ophelpers import assert_bit_exact, run_te


def _softmax(x):
    z = np.exp(x - x.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def _int8_logits(rng, shape, value_range):
    """Random logits in ±value_range quantized to int8; returns (q, scale)."""
    scale = value_range / 127.0
    x = rng.uniform(-value_range, value_range, shape)
    return np.clip(np.round(x / scale), -128, 127).astype(np.int8), scale


def test_params_pick_x0_and_check_the_budget():
    p = shiftmax.params(8 / 127, 197)
    assert p == {"x0": int(np.floor(-127 / 8)), "n": 15, "k": 16}
    assert 197 * abs(p["x0"]) * 2 ** p["n"] < 2**31
    # A fine scale on long rows: n is lowered until the row sum fits in int32.
    p = shiftmax.params(1 / 2000, 4096)
    assert p["n"] < 15 and 4096 * abs(p["x0"]) * 2 ** p["n"] < 2**31
    with pytest.raises(ValueError, match="coarser input scale"):
        shiftmax.params(1e-7, 4096)
    with pytest.raises(ValueError):
        shiftmax.params(0.0, 16)


@pytest.mark.parametrize("value_range, length, k, max_err, mean_err, mass_err", [
    # Regression pins, <= 10% above the values measured (seed 0, 64 rows), max / mean
    # |p - softmax|, max |row sum - 1|: ±4/197/k16: 0.002718 / 0.0001100 / 0.01386;
    # ±8/64/k16: 0.01562 / 0.0004363 / 0.001862; ±16/64/k16: 0.02708 / 0.0005488 / 0.0009155;
    # ±8/64/k8: 0.01737 / 0.0009400 / 0.04688.
    (4.0, 197, 16, 0.0029, 0.00012, 0.015),
    (8.0, 64, 16, 0.017, 0.00047, 0.002),
    (16.0, 64, 16, 0.029, 0.0006, 0.001),
    (8.0, 64, 8, 0.019, 0.001, 0.05),
])
def test_accuracy_against_softmax(value_range, length, k, max_err, mean_err, mass_err):
    rng = np.random.default_rng(0)
    q, scale = _int8_logits(rng, (64, length), value_range)
    p = shiftmax.params(scale, length, k=k)
    got = shiftmax.to_float(shiftmax.reference(q, **p), k)
    want = _softmax(q * scale)
    err = np.abs(got - want)
    assert err.max() <= max_err and err.mean() <= mean_err, (err.max(), err.mean())
    assert np.abs(got.sum(-1) - 1).max() <= mass_err


def _cases():
    rng = np.random.default_rng(3)
    yield "random", rng.integers(-128, 128, (2, 3, 50)).astype(np.int8), 8 / 127
    yield "all_equal_rows", np.full((4, 33), 17, np.int8), 4 / 127
    yield "one_hot", np.where(np.arange(64) == 5, 127, -128).astype(np.int8)[None].repeat(3, 0), 16 / 127
    yield "saturated", rng.choice(np.array([-128, 127], np.int8), (5, 16)), 8 / 127
    yield "long_rows", rng.integers(-128, 128, (2, 4096)).astype(np.int8), 8 / 127
    yield "int16_input", rng.integers(-30000, 30000, (3, 40)).astype(np.int16), 0.001
    yield "single_column", rng.integers(-128, 128, (6, 1)).astype(np.int8), 8 / 127


@pytest.mark.parametrize("k", [16, 8])
@pytest.mark.parametrize("name, q, scale", list(_cases()), ids=[c[0] for c in _cases()])
def test_backends_bit_exact(name, q, scale, k):
    p = shiftmax.params(scale, q.shape[-1], k=k)
    want = shiftmax.reference(q, **p)
    assert want.dtype == np.dtype(shiftmax.out_dtype(k))
    assert want.min() >= 0 and want.max() <= 2 ** (k - 1) - 1
    assert_bit_exact("numba", shiftmax.numba_kernel(q, **p), want)
    assert_bit_exact("tvm", run_te(shiftmax.te_compute, [q], **p), want)
    table = shiftmax.exp_table(q.dtype.name, x0=p["x0"], n=p["n"])
    assert table.shape == (2 ** (8 * q.itemsize),) and table[-1] == shiftmax.shift_exp(
        np.zeros(1, np.int64), p["x0"], p["n"])[0]
    assert_bit_exact("tvm-table", run_te(shiftmax.te_compute, [q], tensors={"table": table}, **p),
                     want)


@pytest.mark.parametrize("q, scale, k", [
    (np.array([[5]], np.int8), 1.5, 16),                       # one element, coarse scale
    (np.array([[127] + [-128] * 15], np.int8), 16 / 127, 8),   # one-hot row, I-ViT's k = 8
])
def test_dominant_element_does_not_wrap(q, scale, k):
    from edgert.ops._intmath import INT31_MAX, shift_exp

    p = shiftmax.params(scale, q.shape[-1], k=k)
    e = shift_exp(q.astype(np.int64) - q.max(), p["x0"], p["n"])
    sh = 31 - (k - 1)
    unclamped = (e * (INT31_MAX // e.sum()) + (1 << (sh - 1))) >> sh
    assert unclamped.max() == 2 ** (k - 1)  # one past the largest k-bit value: it would wrap
    out = shiftmax.reference(q, **p)
    assert out.max() == 2 ** (k - 1) - 1
    assert_bit_exact("numba", shiftmax.numba_kernel(q, **p), out)


def _mask_cases():
    rng = np.random.default_rng(7)
    q = rng.integers(-128, 128, (2, 3, 5, 12)).astype(np.int8)
    pad = np.ones((2, 1, 1, 12), np.int64)
    pad[0, ..., 9:] = 0                                            # padded sentence 0
    yield "attention_padding", q, (1 - pad), 8 / 127
    yield "bool_per_element", q, rng.random((2, 3, 5, 12)) < 0.3, 8 / 127
    masked_high = q.copy()
    masked_high[..., -2:] = 127                                    # excluded maxima do not count
    yield "excluded_maxima", masked_high, np.broadcast_to(np.arange(12) >= 10, (12,)).astype(np.int32), 8 / 127
    yield "all_excluded_row", q[0, 0], np.ones((5, 1), np.int8), 8 / 127


@pytest.mark.parametrize("name, q, exclude, scale", list(_mask_cases()),
                         ids=[c[0] for c in _mask_cases()])
def test_exclude_mask(name, q, exclude, scale):
    p = shiftmax.params(scale, q.shape[-1])
    want = shiftmax.reference(q, exclude, **p)
    keep = np.broadcast_to(np.asarray(exclude) == 0, q.shape)
    assert (want[~keep] == 0).all()
    rows = keep.any(-1)
    if rows.any():
        # Kept elements equal Shiftmax over the kept elements alone (row by row).
        for idx in zip(*np.nonzero(rows)):
            alone = shiftmax.reference(q[idx][keep[idx]][None], **p)[0]
            np.testing.assert_array_equal(want[idx][keep[idx]], alone)
    else:
        assert (want == 0).all()
    assert_bit_exact("numba", shiftmax.numba_kernel(q, exclude, **p), want)
    assert_bit_exact("tvm", run_te(shiftmax.te_compute, [q, np.asarray(exclude)], **p), want)
    table = shiftmax.exp_table(q.dtype.name, x0=p["x0"], n=p["n"])
    assert_bit_exact("tvm-table", run_te(shiftmax.te_compute, [q, np.asarray(exclude)],
                                         tensors={"table": table}, **p), want)
