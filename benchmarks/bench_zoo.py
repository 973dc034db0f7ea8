"""torchvision's classifiers: edgert fp32 and int-only against onnxruntime fp32 and static int8.

    python benchmarks/bench_zoo.py [--models resnet18 mobilenet_v2 ...] [--size 224]
                                   [--threads 2] [--rounds 10] [--repeats 20] [--calib 8]
                                   [--images 4] [--runtimes edgert-fp32 ort-fp32 ...]
                                   [--without schedule_grouped.grouped_convs ...]
                                   [--json out.json]

For each model of ``edgert.models.torchvision_zoo.ZOO`` (random weights that behave like trained
ones, BatchNorm statistics measured at ``--size``), exported by ``torch.onnx.export``
(TorchScript, opset 17, a static batch of 1):

- compile time of ``edgert compile`` (fp32) and ``edgert compile --int-only`` (calibrated on
  ``--calib`` random images; the ``float ops`` column counts the float ops left inside the
  compiled graph, 0 for a graph that is integer-only), and of onnxruntime's
  ``quantize_static`` (QDQ, int8 activations and per-channel int8 weights, as edgert quantizes
  them; calibrated on the same images);
- batch-1 latency with ``--threads`` threads of the four runtimes: edgert fp32, edgert int-only,
  onnxruntime fp32 and onnxruntime int8 (static, QDQ);
- the logits' cosine to onnxruntime fp32 on ``--images`` other random images (the minimum over
  the images), and the same cosine after subtracting onnxruntime fp32's mean logits over those
  images from both (what depends on the image; the shared part of random-weight logits is large).

Each runtime runs in its own process (no thread pool spins next to another runtime's kernels;
no allocator or cache state is shared); one process works at a time. A round times every runtime
once (``--repeats`` calls, median), in alternating order (forward, then backward) so no runtime
always runs first; a ratio is computed within each round and reported as the median over the
rounds with its range (min-max). A compile that fails is reported as a row with its error.

``--runtimes`` picks the runtimes (onnxruntime fp32, the reference, always runs);
``edgert-fp32-before`` is edgert fp32 compiled with the rewrites named by ``--without``
(``module.function`` of ``edgert.compiler``) replaced by the identity: a before/after of one
rewrite, timed in the same rounds.

``--size 224``: the input size these classifiers are built and benchmarked at; at 64x64 most of
them end in a 2x2 feature map and a call takes well under a millisecond, which measures the
per-layer overhead more than the convolutions.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from common import emit
from processes import Worker, call_times, in_child, one_line, open_runtime, serve

RUNTIMES = ("edgert-fp32", "edgert-int", "ort-fp32", "ort-int8-static")
BEFORE = "edgert-fp32-before"
REFERENCE = "ort-fp32"


# --- work done in child processes ---------------------------------------------------------------

def compile_child(onnx_path: str, out: str, threads: int, calib: str | None,
                  without: tuple[str, ...] = ()) -> tuple[float, int]:
    """``compile_model`` (``--int-only`` when ``calib`` is given, the rewrites ``without``
    (``module.function`` of ``edgert.compiler``) replaced by the identity); returns its wall time
    in s and the number of float ops inside the compiled graph (``edgert inspect``'s count)."""
    import onnx

    from edgert.artifact import MODEL_MEMBER, read_artifact
    from edgert.compiler import compile_model
    from edgert.model_info import describe_model

    disable_rewrites(without)

    t0 = time.perf_counter()
    cache = False if without else None       # the compile cache keys the source, not patches
    if calib:
        compile_model(onnx_path, out, threads=threads, int_only=True, calib=calib, cache=cache)
    else:
        compile_model(onnx_path, out, threads=threads, cache=cache)
    seconds = time.perf_counter() - t0
    graph = onnx.load_from_string(read_artifact(out).members[MODEL_MEMBER])
    return seconds, int(describe_model(graph)["float_ops"])


def disable_rewrites(names: tuple[str, ...]) -> None:
    """Replace the rewrites ``names`` (``module.function`` of ``edgert.compiler``) by the
    identity in this process (the "before" build of a before/after comparison)."""
    import importlib

    for name in names:
        module, function = name.rsplit(".", 1)
        setattr(importlib.import_module(f"edgert.compiler.{module}"), function, lambda mod: mod)


def quantize_child(onnx_path: str, out: str, calib: str) -> tuple[float, None]:
    """onnxruntime's ``quantize_static`` (QDQ, int8 activations, per-channel int8 weights) fed
    the calibration images one at a time; returns its wall time in s (and no float-op count)."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    images = np.load(calib)["x"]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"x": images[i:i + 1]} for i in range(len(images))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    pre = str(Path(out).with_suffix(".pre.onnx"))
    t0 = time.perf_counter()
    with contextlib.chdir(Path(out).parent):    # ORT's quantizer leaves temporary files in the cwd
        quant_pre_process(onnx_path, pre)
        quantize_static(pre, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    return time.perf_counter() - t0, None


def runtime_worker(conn: Any, runtime: str, path: str, threads: int,
                   input_name: str = "x") -> None:
    """Serve one runtime in this process: ``("logits", images)`` -> the logits of each image
    (batch 1), ``("time", (image, repeats, warmup))`` -> call times in s, ``("stop", None)``
    (:func:`processes.serve`). The model's one input is ``input_name``."""

    def handle(runner: Any, cmd: str, arg: Any) -> np.ndarray:
        if cmd == "logits":
            return np.concatenate([runner.run(None, {input_name: im[None]})[0] for im in arg])
        image, repeats, warmup = arg
        feed = {input_name: image[None]}
        for _ in range(warmup):
            runner.run(None, feed)
        return call_times(lambda: runner.run(None, feed), repeats)

    serve(conn, lambda: open_runtime(runtime, path, threads), handle)


# --- the parent: build, time, compare -----------------------------------------------------------

def build(name: str, args: argparse.Namespace, tmp: Path) -> dict[str, dict[str, Any]]:
    """Export ``name`` and build every runtime's model: runtime -> {path, compile_s, error}."""
    from edgert.models.torchvision_zoo import export, random_model

    with warnings.catch_warnings():                # the TorchScript exporter's deprecation
        warnings.simplefilter("ignore")
        onnx_path = export(random_model(name, size=args.size), tmp / f"{name}.onnx",
                           dynamo=False, static_batch=True, size=args.size)
    calib = tmp / f"{name}_calib.npz"
    rng = np.random.default_rng(0)
    np.savez(calib, x=rng.standard_normal((args.calib, 3, args.size, args.size), np.float32))
    jobs = {"edgert-fp32": (compile_child, str(onnx_path), str(tmp / f"{name}_fp32.edgert"),
                            args.threads, None),
            "edgert-int": (compile_child, str(onnx_path), str(tmp / f"{name}_int.edgert"),
                           args.threads, str(calib)),
            "ort-int8-static": (quantize_child, str(onnx_path),
                                str(tmp / f"{name}_ort_int8.onnx"), str(calib)),
            BEFORE: (compile_child, str(onnx_path), str(tmp / f"{name}_before.edgert"),
                     args.threads, None, tuple(args.without))}
    jobs = {r: job for r, job in jobs.items() if r in args.runtimes}
    built = {"ort-fp32": {"path": onnx_path, "compile_s": None, "float_ops": None, "error": None}}
    for runtime, (fn, *fn_args) in jobs.items():
        result, error = in_child(fn, *fn_args)
        seconds, float_ops = result or (None, None)
        built[runtime] = {"path": Path(fn_args[1]), "compile_s": seconds, "float_ops": float_ops,
                          "error": error}
        status = f"{seconds:.1f} s" if error is None else f"FAILED: {error}"
        print(f"  {name} {runtime}: {status}", file=sys.stderr)
    return built


def cosines(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row (one image's logits)."""
    g, w = got.astype(np.float64), want.astype(np.float64)
    return (g * w).sum(1) / np.linalg.norm(g, axis=1) / np.linalg.norm(w, axis=1)


def time_rounds(workers: dict[str, Worker], image: np.ndarray, args: argparse.Namespace,
                rows: dict[str, dict]) -> dict[str, np.ndarray]:
    """Median call time (s) of each runtime in each round: runtime -> ``[rounds]``. Odd rounds
    run the runtimes in reverse order. A runtime whose process fails leaves the rounds (its row
    gets the error)."""
    medians = {r: np.empty(args.rounds) for r in workers}
    for k in range(-1, args.rounds):                     # round -1: the warm-up calls
        order = list(medians) if k % 2 == 0 else list(medians)[::-1]
        for r in order:
            try:
                times = workers[r].call("time", (image, args.repeats if k >= 0 else 1,
                                                 0 if k >= 0 else args.warmup))
            except RuntimeError as e:
                rows[r]["error"] = f"run: {e}"
                del medians[r]
                continue
            if k >= 0:
                medians[r][k] = np.median(times)
    return medians


def ratio(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Per-round ratio ``a / b``: median, min and max over the rounds."""
    x = a / b
    return {"median": float(np.median(x)), "min": float(x.min()), "max": float(x.max())}


def bench_model(name: str, args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    """One model's rows: a row per runtime (a failed build or run: a row with its error)."""
    try:
        built = build(name, args, tmp)
    except Exception as e:  # noqa: BLE001 - an export that fails is a row too
        traceback.print_exc()
        return [{"model": name, "runtime": r, "error": f"export: {one_line(e)}"}
                for r in args.runtimes]
    rows = {r: {"model": name, "runtime": r, **{k: built[r][k] for k in
                                                 ("compile_s", "float_ops", "error")}}
            for r in args.runtimes}
    workers: dict[str, Worker] = {}
    try:
        for r in args.runtimes:
            if rows[r]["error"] is None:
                try:
                    workers[r] = Worker(runtime_worker, r, built[r]["path"], args.threads)
                except RuntimeError as e:
                    rows[r]["error"] = f"load: {e}"
        if REFERENCE not in workers:
            return list(rows.values())
        measure(workers, rows, args)
    finally:
        for w in workers.values():
            w.close()
    return list(rows.values())


def measure(workers: dict[str, Worker], rows: dict[str, dict], args: argparse.Namespace) -> None:
    """Fill ``rows`` with cosines to onnxruntime fp32 and latencies of the loaded runtimes."""
    rng = np.random.default_rng(1)
    images = rng.standard_normal((args.images, 3, args.size, args.size), np.float32)
    logits = {}
    for r in list(workers):
        try:
            logits[r] = workers[r].call("logits", images)
        except RuntimeError as e:
            rows[r]["error"] = f"run: {e}"
            workers.pop(r).close()
    ref = logits[REFERENCE]
    for r, out in logits.items():
        rows[r]["cosine_min"] = float(cosines(out, ref).min())
        rows[r]["centered_cosine_min"] = float(cosines(out - ref.mean(0), ref - ref.mean(0)).min())
    medians = time_rounds(workers, images[0], args, rows)
    for r, m in medians.items():
        rows[r]["p50_ms"] = float(np.median(m) * 1e3)
        for peer, key in ((REFERENCE, "vs_ort_fp32"), ("ort-int8-static", "vs_ort_int8_static")):
            if peer in medians:
                rows[r][key] = ratio(m, medians[peer])


def fmt_ratio(r: dict[str, float] | None) -> str:
    return "" if r is None else f"{r['median']:.2f}x [{r['min']:.2f}-{r['max']:.2f}]"


def print_table(rows: list[dict[str, Any]]) -> None:
    def num(v: float | None, f: str) -> str:
        return "" if v is None else format(v, f)

    print(f"{'model':<20}{'runtime':<17}{'compile s':>10}{'float ops':>10}{'p50 ms':>10}  "
          f"{'/ ORT fp32':<21}{'/ ORT int8 QDQ':<21}{'cos':>8}{'centered':>10}")
    for r in rows:
        line = (f"{r['model']:<20}{r['runtime']:<17}{num(r.get('compile_s'), '.1f'):>10}"
                f"{num(r.get('float_ops'), 'd'):>10}")
        if r.get("error"):
            print(f"{line}  FAILED: {r['error']}")
            continue
        print(f"{line}{num(r.get('p50_ms'), '.2f'):>10}  {fmt_ratio(r.get('vs_ort_fp32')):<21}"
              f"{fmt_ratio(r.get('vs_ort_int8_static')):<21}{num(r.get('cosine_min'), '.4f'):>8}"
              f"{num(r.get('centered_cosine_min'), '.4f'):>10}")


def main(argv: list[str] | None = None) -> int:
    from edgert.models.torchvision_zoo import ZOO

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(ZOO), choices=list(ZOO))
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10, help="alternating timing rounds")
    parser.add_argument("--repeats", type=int, default=20, help="calls per runtime per round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls before round 1")
    parser.add_argument("--calib", type=int, default=8, help="calibration images")
    parser.add_argument("--images", type=int, default=4, help="images the cosines are taken on")
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES),
                        choices=[*RUNTIMES, BEFORE])
    parser.add_argument("--without", nargs="*", default=[],
                        help=f"{BEFORE}: rewrites replaced by the identity (module.function)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    args.runtimes = [REFERENCE] + [r for r in args.runtimes if r != REFERENCE]

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            print(f"{name}: export and build", file=sys.stderr)
            rows += bench_model(name, args, Path(tmp))
    print_table(rows)
    emit({"benchmark": "torchvision zoo, batch 1 (ratios < 1: faster than the peer)",
          "size": args.size, "threads": args.threads, "rounds": args.rounds,
          "repeats": args.repeats, "cpu_count": os.cpu_count(), "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
