"""Memory bandwidth: what a run achieves streaming its weights, against what this machine
reads at most (a quick numpy measurement)."""

from __future__ import annotations

import functools
import time

import numpy as np

PROBE_BYTES = 64 << 20
"""Size of the array the read-bandwidth probe sums (64 MiB: past the last-level cache of the
machines edgert targets)."""


@functools.lru_cache(maxsize=1)
def read_bandwidth_gbps(nbytes: int = PROBE_BYTES, repeats: int = 5) -> float:
    """This machine's read bandwidth in GB/s (1e9 bytes/s): the best of ``repeats`` passes
    of two vectorized reductions (``np.max``, and ``np.dot`` of the array with itself, which
    may use the BLAS's threads) over a float32 array of ``nbytes``, whose arithmetic costs far
    less than the reads. Measured once per process (~0.1-0.5 s)."""
    a = np.ones(max(1, nbytes // 4), dtype=np.float32)
    a.max()                                       # page the array in
    best = float("inf")
    for _ in range(repeats):
        for reduce in (np.max, lambda x: np.dot(x, x)):
            t0 = time.perf_counter()
            reduce(a)
            best = min(best, time.perf_counter() - t0)
    return a.nbytes / best / 1e9


def achieved_bandwidth(weight_bytes: int, seconds: float, roofline_gbps: float | None) -> dict:
    """Weight bytes read per second of a run (GB/s) and its share of ``roofline_gbps``
    (percent). Above 100 % means the weights stayed in the caches from run to run."""
    gbps = weight_bytes / seconds / 1e9 if seconds > 0 else 0.0
    return {"weight_bytes": int(weight_bytes), "achieved_gbps": gbps,
            "roofline_read_gbps": roofline_gbps,
            "percent_of_roofline": 100.0 * gbps / roofline_gbps if roofline_gbps else None}
