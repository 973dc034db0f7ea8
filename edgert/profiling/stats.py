"""Summary statistics of measured latencies."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

STAT_KEYS = ("min", "mean", "p50", "p90", "p99", "max", "std")
"""The keys of :func:`latency_stats`, in report order."""


def latency_stats(seconds: Sequence[float] | np.ndarray) -> dict[str, float]:
    """min, mean, p50, p90, p99, max and std (population, ddof=0) of latencies, in
    milliseconds. Percentiles interpolate linearly between order statistics (numpy's default).

    Args:
        seconds: one wall time per run, in seconds (at least one).
    """
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    if ms.ndim != 1 or ms.size == 0:
        raise ValueError("latency_stats needs a non-empty 1-D sequence of latencies")
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"min": float(ms.min()), "mean": float(ms.mean()), "p50": float(p50),
            "p90": float(p90), "p99": float(p99), "max": float(ms.max()),
            "std": float(ms.std())}


def throughput_per_s(seconds: Sequence[float] | np.ndarray, batch: int = 1) -> float:
    """Samples per second: ``batch`` over the mean latency (``seconds`` as in
    :func:`latency_stats`)."""
    mean = float(np.mean(np.asarray(seconds, dtype=np.float64)))
    return batch / mean if mean > 0 else float("inf")


def histogram(ms: Sequence[float] | np.ndarray, bins: int = 20,
              scale: str | None = None) -> tuple[list[int], list[float], str]:
    """Counts, bin edges (ms) and scale of latencies for the report's histogram, from the min
    to the max. ``scale`` ``"log"`` spaces the edges geometrically (a busy machine's few stalls,
    100x the median, would squeeze every other run into one linear bin); the default picks
    log when the max is over 10x the min. All values in one bin when they are equal."""
    ms = np.asarray(ms, dtype=np.float64)
    lo, hi = float(ms.min()), float(ms.max())
    if hi <= lo:
        hi = lo + max(abs(lo) * 1e-3, 1e-6)
    if scale is None:
        scale = "log" if lo > 0 and hi > 10 * lo else "linear"
    if scale == "log":
        edges = np.geomspace(lo, hi, bins + 1)
        edges[0], edges[-1] = lo, hi
    else:
        edges = np.linspace(lo, hi, bins + 1)
    counts, _ = np.histogram(ms, bins=edges)
    return [int(c) for c in counts], [float(e) for e in edges], scale
