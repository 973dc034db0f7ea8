"""``edgert demo``: the main job on a built-in example.

A tiny ViT trained on scikit-learn's digits (8x8 images, 10 classes) ships inside the package
as ONNX with its held-out test set (``examples/vit_digits.py`` makes both). The demo compiles the
ONNX model for this machine, runs the test set through edgert and onnxruntime, and reports
accuracy and batch-1 latency side by side.
"""

from __future__ import annotations

import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from edgert.timing import interleaved_latencies, summarize

DEMO_MODEL = "vit_digits.onnx"
DEMO_DATA = "vit_digits_test.npz"
DEMO_CALIB = "vit_digits_calib.npz"


def demo_files() -> tuple[Path, Path]:
    """Paths of the packaged demo model and test set."""
    data = resources.files("edgert") / "data"
    return Path(str(data / DEMO_MODEL)), Path(str(data / DEMO_DATA))


def demo_calib_file() -> Path:
    """Path of the packaged calibration inputs of the demo model (128 training images)."""
    return Path(str(resources.files("edgert") / "data" / DEMO_CALIB))


def run_demo(*, target: str = "host", threads: int | None = None, repeats: int = 100,
             on_stage: Any = None) -> dict[str, Any]:
    """Compile the demo ViT, run its test set on edgert and onnxruntime, compare.

    Args:
        target: compile target (must run on this machine).
        threads: threads for both runtimes (default: edgert's and onnxruntime's defaults).
        repeats: batch-1 latency samples per runtime.
        on_stage: compile progress callback (see ``compile_model``).

    Returns:
        A dict with accuracy, agreement and latency figures for both runtimes.
    """
    from edgert.compiler import compile_model
    from edgert.peers import onnxruntime_session
    from edgert.session import Session

    model_path, data_path = demo_files()
    data = np.load(data_path)
    images, labels = data["images"].astype(np.float32), data["labels"]

    with tempfile.TemporaryDirectory(prefix="edgert-demo-") as tmp:
        t0 = time.perf_counter()
        artifact = compile_model(model_path, Path(tmp) / "vit_digits.edgert", target=target,
                                 threads=threads, on_stage=on_stage)
        compile_s = time.perf_counter() - t0
        sess = Session(artifact, threads=threads)
    ref = onnxruntime_session(model_path, threads)
    name = sess.get_inputs()[0].name

    [ours] = sess.run(None, {name: images})
    [theirs] = ref.run(None, {name: images})
    one = images[:1]
    calls = {"edgert": lambda: sess.run(None, {name: one}),
             "onnxruntime": lambda: ref.run(None, {name: one})}
    lat = interleaved_latencies(calls, repeats=repeats)
    acc = {k: float((v.argmax(1) == labels).mean()) for k, v in
           (("edgert", ours), ("onnxruntime", theirs))}
    return {
        "model": DEMO_MODEL,
        "test_images": int(len(labels)),
        "target": sess.manifest["target"]["name"],
        "compile_s": compile_s,
        "accuracy": acc,
        "agreement": float((ours.argmax(1) == theirs.argmax(1)).mean()),
        "max_abs_logit_diff": float(np.abs(ours - theirs).max()),
        "latency_batch1": {k: summarize(v) for k, v in lat.items()},
    }
