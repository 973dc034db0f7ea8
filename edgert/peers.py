"""The peer runtimes edgert is compared with (demo, benchmarks, tests)."""

from __future__ import annotations

import os
from typing import Any


def onnxruntime_session(model_path: str | os.PathLike, threads: int | None = None) -> Any:
    """An onnxruntime CPU session set up for side-by-side timing with edgert.

    Spinning of ORT's intra-op pool is turned off: interleaved with edgert's kernels, a
    spinning pool steals the cores from the other runtime (measured here: edgert's
    TransformerEncoder went from 1.9 ms to 6.0 ms next to a spinning ORT on 2 cores).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
