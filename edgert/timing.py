"""Latency measurement that is fair on a noisy shared machine.

Candidates are timed interleaved (A, B, A, B, ...) in one process, so drift in machine load
hits all of them alike; compare them as ratios of medians.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np


def interleaved_latencies(fns: Mapping[str, Callable[[], object]], *, repeats: int = 50,
                          warmup: int = 3) -> dict[str, np.ndarray]:
    """Time each zero-argument callable ``repeats`` times, interleaved.

    Returns:
        name -> latencies in seconds (float64 array of length ``repeats``).
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: np.empty(repeats) for name in fns}
    for r in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name][r] = time.perf_counter() - t0
    return times


def summarize(latencies_s: np.ndarray) -> dict[str, float]:
    """p50/p90/p99/mean of latencies, in milliseconds."""
    ms = np.asarray(latencies_s) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }
