"""An embedded app: one Session, created once, called in a loop (a camera-style stream).

    python examples/embedded_app.py                  # compiles the demo ViT on first use
    python examples/embedded_app.py model.edgert     # any artifact with one image input

Frames arrive one at a time; each goes through the same session. Bad frames (wrong shape or
dtype) are rejected with edgert's InputError and the loop goes on. At the end it prints the
frames processed, the rejected ones and the latency percentiles.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import edgert
from edgert.timing import summarize


def frames(images: np.ndarray, count: int):
    """A stand-in for a camera: yields ``count`` frames, with a malformed one now and then."""
    rng = np.random.default_rng(0)
    for i in range(count):
        if i % 50 == 49:
            yield i, rng.standard_normal((1, 8, 8))  # float64 and missing the batch axis
        else:
            yield i, images[i % len(images)][None]


def main(argv: list[str]) -> int:
    from edgert.demo import demo_files

    model_path, data_path = demo_files()
    images = np.load(data_path)["images"].astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        if argv:
            artifact = Path(argv[0])
        else:
            from edgert.compiler import compile_model

            artifact = compile_model(model_path, Path(tmp) / "vit.edgert")
        sess = edgert.Session(artifact)
    name = sess.get_inputs()[0].name

    latencies, rejected, predictions = [], 0, []
    for i, frame in frames(images, 500):
        t0 = time.perf_counter()
        try:
            [logits] = sess.run(None, {name: frame})
        except edgert.InputError as e:
            rejected += 1
            print(f"frame {i} rejected: {e}")
            continue
        latencies.append(time.perf_counter() - t0)
        predictions.append(int(logits.argmax()))
    stats = summarize(np.array(latencies))
    print(f"{len(latencies)} frames, {rejected} rejected; latency p50 {stats['p50_ms']:.3f} ms, "
          f"p99 {stats['p99_ms']:.3f} ms; classes seen {sorted(set(predictions))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
