"""Memory figures of a profile: artifact and weight sizes, resident memory of the process."""

from __future__ import annotations

import os
import resource
import sys
from typing import Any


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def resident_bytes() -> int | None:
    """The process's resident memory now (VmRSS), bytes; None where /proc is absent."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def peak_resident_bytes() -> int:
    """The process's peak resident memory (VmHWM, else ``ru_maxrss``), bytes."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def reset_peak() -> bool:
    """Reset the peak (VmHWM) to the current resident memory (Linux ``clear_refs`` 5), so that
    :func:`peak_resident_bytes` reads the peak from now on. False where that is not possible
    (then the peak counts from process start)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def weight_bytes(artifact: Any) -> tuple[int, str]:
    """Bytes of the model's weights and where the number comes from: the initializers of the
    artifact's ONNX graph (``onnx`` installed), else the size of its compiled library (an
    upper bound: code included)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        lib = artifact.members.get(artifact.lib_member or "", b"")
        return len(lib), "compiled library size"
    model = onnx.load_from_string(artifact.model_bytes)
    total = sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
    return int(total), "onnx initializers"


def memory_report(artifact: Any, load_rss_bytes: int | None, peak_bytes: int,
                  peak_since_reset: bool) -> dict[str, Any]:
    """The ``memory`` object of a result (bytes)."""
    weights, source = weight_bytes(artifact)
    return {"artifact_bytes": os.path.getsize(artifact.path), "weights_bytes": weights,
            "weights_source": source, "load_rss_bytes": load_rss_bytes,
            "peak_rss_bytes": peak_bytes,
            "peak_scope": "timed runs" if peak_since_reset else "process lifetime"}
