"""Pretrained detectors and OCR models from PyPI wheels: edgert fp32 against onnxruntime fp32.

    python benchmarks/bench_real.py [--models nudenet-320n ppocrv4-det ...] [--threads 2]
                                    [--rounds 10] [--repeats 10] [--kernels 8]
                                    [--without schedule_nhwc.nhwc_convs ...] [--json out.json]

The models of ``tests/test_wheel_models.py`` (fetched once by
:func:`edgert.models.wheels.wheel_file`) at batch 1 and the sizes they are used at: nudenet's
YOLOv8n-style detector at 320x320, PP-OCRv4's text detector at 320x320 and recognizer at
48x320, PP-OCR's direction classifier at 48x192. Each is compiled fp32 with ``--input-shape``
and timed against onnxruntime fp32 as in ``bench_zoo.py`` (each runtime in its own process,
rounds alternating the order, ratios within a round: median [min-max]). ``--kernels N``: also
print edgert's N slowest kernels (``Session.kernel_times``: ms per run, calls) per model, to
see what dominates. ``--without``: also time ``edgert-fp32-before``, edgert fp32 compiled with
those rewrites (``module.function`` of ``edgert.compiler``) replaced by the identity, in the
same rounds (a before/after of one rewrite). Compiles bypass the compile cache.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench_zoo import BEFORE, disable_rewrites, fmt_ratio, ratio, runtime_worker, time_rounds
from common import emit
from processes import Worker, in_child

# name: (package, version, member, input, shape)
MODELS = {
    "nudenet-320n": ("nudenet", "3.4.2", "nudenet/320n.onnx", "images", (1, 3, 320, 320)),
    "ppocrv4-det": ("rapidocr-onnxruntime", "1.4.4",
                    "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", "x",
                    (1, 3, 320, 320)),
    "ppocrv4-rec": ("rapidocr-onnxruntime", "1.4.4",
                    "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", "x",
                    (1, 3, 48, 320)),
    "ppocr-cls": ("rapidocr-onnxruntime", "1.4.4",
                  "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx", "x",
                  (1, 3, 48, 192)),
}
RUNTIMES = ("ort-fp32", "edgert-fp32")


def compile_child(onnx_path: str, out: str, input_name: str, shape: tuple[int, ...],
                  threads: int, kernels: int, without: tuple[str, ...] = ()
                  ) -> tuple[float, list[tuple[str, int, float]]]:
    """``compile_model`` with ``--input-shape`` (the rewrites ``without`` replaced by the
    identity); returns its wall time in s and the ``kernels`` slowest kernels of a run on noise
    (name, calls, ms per run)."""
    import edgert
    from edgert.compiler import compile_model

    disable_rewrites(without)
    t0 = time.perf_counter()
    compile_model(onnx_path, out, threads=threads, input_shapes={input_name: shape},
                  cache=False)
    seconds = time.perf_counter() - t0
    if not kernels:
        return seconds, []
    sess = edgert.Session(out, threads=threads)
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    times = sess.kernel_times({input_name: x}, repeats=10)
    return seconds, [(k.name, k.calls, k.ms) for k in times[:kernels]]


def bench_model(name: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """One model's row: compile time, p50 of each runtime, edgert/ORT ratio, slowest kernels."""
    from edgert.models.wheels import wheel_file

    package, version, member, input_name, shape = MODELS[name]
    path = wheel_file(package, version, member)
    art = tmp / f"{name}.edgert"
    result, error = in_child(compile_child, str(path), str(art), input_name, shape,
                             args.threads, args.kernels)
    row: dict[str, Any] = {"model": name, "shape": list(shape), "error": error}
    if error:
        return row
    row["compile_s"], row["kernels"] = result
    paths = {"ort-fp32": path, "edgert-fp32": art}
    runtimes = list(RUNTIMES)
    if args.without:
        paths[BEFORE] = tmp / f"{name}_before.edgert"
        _, error = in_child(compile_child, str(path), str(paths[BEFORE]), input_name, shape,
                            args.threads, 0, tuple(args.without))
        if error:
            row["error"] = f"{BEFORE}: {error}"
            return row
        runtimes.append(BEFORE)
    workers = {r: Worker(runtime_worker, r, paths[r], args.threads, input_name)
               for r in runtimes}
    try:
        image = np.random.default_rng(1).random(shape[1:], dtype=np.float32)
        errors: dict[str, dict] = {r: {} for r in runtimes}
        medians = time_rounds(workers, image, args, errors)
    finally:
        for w in workers.values():
            w.close()
    if len(medians) < len(runtimes):
        row["error"] = "; ".join(f"{r}: {e['error']}" for r, e in errors.items() if e)
        return row
    for r, m in medians.items():
        row[f"{r}_p50_ms"] = float(np.median(m) * 1e3)
    row["edgert_over_ort"] = ratio(medians["edgert-fp32"], medians["ort-fp32"])
    if BEFORE in medians:
        row["before_over_ort"] = ratio(medians[BEFORE], medians["ort-fp32"])
        row["after_over_before"] = ratio(medians["edgert-fp32"], medians[BEFORE])
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10, help="alternating timing rounds")
    parser.add_argument("--repeats", type=int, default=10, help="calls per runtime per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before round 1")
    parser.add_argument("--kernels", type=int, default=8, help="slowest kernels to list")
    parser.add_argument("--without", nargs="*", default=[],
                        help="also time edgert fp32 built without these rewrites")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            print(f"{name}: build", file=sys.stderr)
            row = bench_model(name, args, Path(tmp))
            rows.append(row)
            if row["error"]:
                print(f"{name:<14} FAILED: {row['error']}")
                continue
            print(f"{name:<14} {'x'.join(map(str, row['shape'])):<12} compile "
                  f"{row['compile_s']:.1f} s  ORT {row['ort-fp32_p50_ms']:.2f} ms  edgert "
                  f"{row['edgert-fp32_p50_ms']:.2f} ms  edgert/ORT "
                  f"{fmt_ratio(row['edgert_over_ort'])}", flush=True)
            if "after_over_before" in row:
                print(f"{'':<14} before {row[f'{BEFORE}_p50_ms']:.2f} ms  before/ORT "
                      f"{fmt_ratio(row['before_over_ort'])}  after/before "
                      f"{fmt_ratio(row['after_over_before'])}", flush=True)
            for kname, calls, ms in row["kernels"]:
                print(f"    {kname:<58} {ms:8.3f} ms  x{calls}")
    emit({"benchmark": "pretrained wheel models, fp32, batch 1 (ratios < 1: edgert faster)",
          "threads": args.threads, "rounds": args.rounds, "repeats": args.repeats,
          "cpu_count": os.cpu_count(), "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
