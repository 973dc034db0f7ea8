"""The ggml peer (``edgert.peers.GgmlMatMul``, benchmarks only): the ctypes binding computes
``x @ W`` (layout and transposition right), exactly for ternary weights in TQ2_0. CI installs
libggml-python (prebuilt ggml, the dev extra); skipped where no libggml is installed."""

from __future__ import annotations

import numpy as np
import pytest

from edgert.peers import GgmlMatMul, libggml_dir

try:
    libggml_dir()
except ImportError as e:
    pytest.skip(str(e), allow_module_level=True)


@pytest.mark.parametrize("rows", [1, 3])
def test_ggml_matmul_ternary_exact_and_q4_0_close(rows):
    rng = np.random.default_rng(0)
    k, n = 512, 96
    w = rng.integers(-1, 2, (k, n)).astype(np.float32) * 0.5       # ternary, one scale
    x = rng.integers(-127, 128, (rows, k)).astype(np.float32)
    x[:, ::256] = 127                      # each 256-block's max is 127: Q8_K scale 1, exact
    np.testing.assert_array_equal(GgmlMatMul(w, "tq2_0", rows, 2).run(x), x @ w)
    wf = rng.standard_normal((k, n)).astype(np.float32)
    xf = rng.standard_normal((rows, k)).astype(np.float32)
    got, want = GgmlMatMul(wf, "q4_0", rows, 2).run(xf), xf @ wf
    assert got.shape == (rows, n)
    assert np.abs(got - want).max() < 0.15 * np.abs(want).max()     # 4-bit weights, 8-bit x


@pytest.mark.parametrize("threads", [1, 2])
def test_ggml_matmul_pool_pause_and_shared_pool(threads):
    """One and two threads give the same exact ternary result; a paused (shared) pool wakes
    for the next run, and every instance with the same threads runs on that one pool."""
    rng = np.random.default_rng(1)
    w = rng.integers(-1, 2, (256, 64)).astype(np.float32)
    x = rng.integers(-127, 128, (2, 256)).astype(np.float32)
    x[:, 0] = 127
    first, second = GgmlMatMul(w, "tq2_0", 2, threads), GgmlMatMul(w, "tq2_0", 2, threads)
    assert (first._pool is None) == (threads == 1) and first._pool == second._pool
    np.testing.assert_array_equal(first.run(x), x @ w)
    first.pause()
    np.testing.assert_array_equal(second.run(x), x @ w)
    np.testing.assert_array_equal(first.run(x), x @ w)
