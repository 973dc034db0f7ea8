"""Attention at long sequence lengths: fp32 softmax (edgert, onnxruntime), integer Shiftmax,
L-Mul and binary attention (quadratic and linear), latency and modelled energy.

    python benchmarks/bench_attention.py [--lengths 128 512 2048 8192] [--threads 2]
                                         [--rounds 3] [--repeats 5] [--json out.json]

The graph: one head group of one sequence, ``q``, ``k``, ``v`` float32 [1, 1, n, 64] inputs,
``softmax(q kᵀ / 8) v`` (MatMul, Mul, Softmax, MatMul), the sequence length ``n`` symbolic. It is
compiled once per runtime, for this machine:

- ``edgert-fp32``: ``edgert compile``; ``ort-fp32``: onnxruntime on the same ONNX file;
- ``edgert-int``: ``--int-only`` (int8 matmuls, Shiftmax), calibrated on 8 random samples at
  n = 256;
- ``edgert-lmul``: ``--lmul attention`` (both matmuls on L-Mul products; timed up to n = 2048
  unless ``--all-lengths``);
- ``edgert-binary-quadratic`` / ``edgert-binary-linear``: ``--binary-attention`` (16-bit
  codes), hash fitted on the same calibration samples.

Inputs are standard normal. Each runtime runs in its own process, one process working at a time;
a round times every runtime once at every length (``--repeats`` calls, median; fewer calls where
one call takes over a second), in alternating order (forward, then backward). Reported per
runtime and length: the median over the rounds and its range (min-max), the ratio to
onnxruntime fp32 (per round, median and range), and the energy that ``edgert.energy.
modelled_energy`` gives the compiled graph (operation counts of each op's ``counts.py`` times
the shipped 45 nm table; a model, not a measurement; onnxruntime's row is the fp32 graph's).
Targets printed at the end: the linear form >= 20x faster than onnxruntime fp32 at the largest
length and its time per token growing by at most 20% from 2048 to 8192; L-Mul within 3x of
edgert fp32 (the ratio of the medians, and the ratios within each round: median and range).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from common import emit
from processes import Worker, call_times, in_child, open_runtime, serve

D = 64
CALIB_N, CALIB_SAMPLES = 256, 8
RUNTIMES = {                       # runtime -> compile options (None: onnxruntime)
    "ort-fp32": None,
    "edgert-fp32": {},
    "edgert-int": {"int_only": True, "calib": True},
    "edgert-lmul": {"lmul": "attention"},
    "edgert-binary-quadratic": {"binary_attention": True, "attention_form": "quadratic",
                                "calib": True},
    "edgert-binary-linear": {"binary_attention": True, "attention_form": "linear",
                             "calib": True},
}
REFERENCE = "ort-fp32"
LONGEST = {"edgert-lmul": 2048}
"""Lengths past these are skipped unless ``--all-lengths`` (L-Mul's target is set up to 2048;
at 8192 its encoded copy of the n x n probabilities adds 256 MiB)."""


def attention_onnx(path: Path) -> Path:
    """The benchmark graph (module docstring), written to ``path``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    f = TensorProto.FLOAT
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["qk"]),
             helper.make_node("Mul", ["qk", "scale"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
             helper.make_node("MatMul", ["probs", "v"], ["out"])]
    inputs = [helper.make_tensor_value_info(n, f, [1, 1, "n", D]) for n in ("q", "k", "v")]
    graph = helper.make_graph(nodes, "attention", inputs,
                              [helper.make_tensor_value_info("out", f, [1, 1, "n", D])],
                              [numpy_helper.from_array(np.float32(D ** -0.5), "scale")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def feed(n: int, seed: int = 0, batch: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal((batch, 1, n, D), np.float32) for k in ("q", "k", "v")}


# --- work done in child processes ---------------------------------------------------------------

def compile_child(onnx_path: str, out: str, threads: int, options: dict, calib: str) -> float:
    """``compile_model`` with ``options`` (``calib: True`` -> the calibration file); its
    wall time in s."""
    from edgert.compiler import compile_model

    opts = {k: (calib if k == "calib" else v) for k, v in options.items()}
    t0 = time.perf_counter()
    compile_model(onnx_path, out, threads=threads, **opts)
    return time.perf_counter() - t0


def energy_child(artifact: str, lengths: list[int]) -> dict[int, float]:
    """Modelled joules of one call at each length (``edgert.energy.modelled_energy``)."""
    from edgert.energy import modelled_energy

    shapes = lambda n: {k: [1, 1, n, D] for k in ("q", "k", "v")}          # noqa: E731
    return {n: modelled_energy(artifact, shapes(n)).joules_per_inference for n in lengths}


def runtime_worker(conn: Any, runtime: str, path: str, threads: int) -> None:
    """Serve one runtime in this process: ``("time", (n, repeats))`` -> call times in s
    (after one untimed call), ``("stop", None)`` (:func:`processes.serve`)."""
    feeds: dict[int, dict] = {}

    def handle(runner: Any, cmd: str, arg: tuple[int, int]) -> np.ndarray:
        n, repeats = arg
        x = feeds.setdefault(n, feed(n, seed=1))
        runner.run(None, x)                                       # warm-up, untimed
        return call_times(lambda: runner.run(None, x), repeats)

    serve(conn, lambda: open_runtime(runtime, path, threads), handle)


# --- the parent: build, time, compare -----------------------------------------------------------

def build(args: argparse.Namespace, tmp: Path) -> dict[str, dict[str, Any]]:
    """Every runtime's model: runtime -> {path, compile_s, energy_j, error}."""
    onnx_path = attention_onnx(tmp / "attention.onnx")
    calib = tmp / "calib.npz"
    np.savez(calib, **feed(CALIB_N, seed=0, batch=CALIB_SAMPLES))
    built: dict[str, dict[str, Any]] = {}
    for runtime, options in RUNTIMES.items():
        if runtime not in args.runtimes:
            continue
        if options is None:
            built[runtime] = {"path": onnx_path, "compile_s": None, "error": None}
            continue
        out = tmp / f"{runtime}.edgert"
        seconds, error = in_child(compile_child, str(onnx_path), str(out), args.threads,
                                  options, str(calib))
        built[runtime] = {"path": out, "compile_s": seconds, "error": error}
        if error is None:
            energy, e_error = in_child(energy_child, str(out), args.lengths)
            built[runtime]["energy_j"] = energy
            built[runtime]["energy_error"] = e_error
        status = f"{seconds:.1f} s" if error is None else f"FAILED: {error}"
        print(f"  {runtime}: compiled in {status}", file=sys.stderr)
    if REFERENCE in built and "edgert-fp32" in built:
        built[REFERENCE]["energy_j"] = built["edgert-fp32"].get("energy_j")
    return built


def repeats_for(seconds: float, repeats: int) -> int:
    """Fewer calls for slow points: ``repeats`` up to 0.2 s a call, then 3, then 1 past 2 s."""
    return repeats if seconds < 0.2 else 3 if seconds < 2 else 1


def time_rounds(workers: dict[str, Worker], args: argparse.Namespace,
                errors: dict[str, str]) -> dict[tuple[str, int], list[float]]:
    """Per (runtime, length): the median call time (s) of each round. Odd rounds run the
    runtimes in reverse order; a runtime that fails leaves the rounds (its error recorded)."""
    medians: dict[tuple[str, int], list[float]] = {}
    first: dict[tuple[str, int], float] = {}
    for k in range(args.rounds):
        order = list(workers) if k % 2 == 0 else list(workers)[::-1]
        for r in order:
            for n in args.lengths:
                if r in errors:
                    break
                if not args.all_lengths and n > LONGEST.get(r, n):
                    continue
                key = (r, n)
                reps = repeats_for(first.get(key, 0.0), args.repeats) if key in first else 1
                try:
                    times = workers[r].call("time", (n, reps))
                except RuntimeError as e:
                    errors[r] = f"run: {e}"
                    break
                first.setdefault(key, float(np.median(times)))
                medians.setdefault(key, []).append(float(np.median(times)))
                print(f"  round {k + 1}: {r} n={n}: {1e3 * np.median(times):.2f} ms",
                      file=sys.stderr)
    return medians


def summarize(built: dict, medians: dict, errors: dict, args: argparse.Namespace
              ) -> list[dict[str, Any]]:
    rows = []
    for r, b in built.items():
        for n in args.lengths:
            row: dict[str, Any] = {"runtime": r, "n": n, "compile_s": b.get("compile_s")}
            err = b.get("error") or errors.get(r)
            if err:
                rows.append({**row, "error": err})
                continue
            m = np.array(medians.get((r, n), []))
            ref = np.array(medians.get((REFERENCE, n), []))
            if len(m):
                row.update(ms=float(np.median(m) * 1e3), ms_min=float(m.min() * 1e3),
                           ms_max=float(m.max() * 1e3))
                if len(ref) == len(m):
                    x = ref / m                                 # > 1: faster than onnxruntime
                    row["speedup_vs_ort"] = {"median": float(np.median(x)),
                                             "min": float(x.min()), "max": float(x.max())}
            energy = b.get("energy_j") or {}
            if n in energy:
                row["energy_uj"] = energy[n] * 1e6
            rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'runtime':<25}{'n':>6}{'ms (median)':>13}  {'range':<21}{'ORT fp32 / this':<23}"
          f"{'energy uJ':>12}")
    for r in rows:
        head = f"{r['runtime']:<25}{r['n']:>6}"
        if r.get("error"):
            print(f"{head}  FAILED: {r['error']}")
            continue
        s = r.get("speedup_vs_ort")
        sp = "" if s is None else f"{s['median']:.2f}x [{s['min']:.2f}-{s['max']:.2f}]"
        rng = f"{r['ms_min']:.2f}-{r['ms_max']:.2f}" if "ms" in r else ""
        ms = f"{r['ms']:.2f}" if "ms" in r else ""
        e = f"{r['energy_uj']:.1f}" if "energy_uj" in r else ""
        print(f"{head}{ms:>13}  {rng:<21}{sp:<23}{e:>12}")


def targets(rows: list[dict[str, Any]], lengths: list[int],
            medians: dict[tuple[str, int], list[float]]) -> dict[str, Any]:
    """The task's targets, as measured (None where a needed point is missing). L-Mul over
    edgert fp32: the ratio of the medians, and the ratios within each round (median, range)."""
    ms = {(r["runtime"], r["n"]): r["ms"] for r in rows if "ms" in r}
    top = max(lengths)
    out: dict[str, Any] = {}
    lin, ort = ms.get(("edgert-binary-linear", top)), ms.get((REFERENCE, top))
    out[f"linear_speedup_vs_ort_at_{top}"] = None if not (lin and ort) else ort / lin
    a, b = ms.get(("edgert-binary-linear", 2048)), ms.get(("edgert-binary-linear", 8192))
    out["linear_per_token_growth_2048_to_8192"] = None if not (a and b) else (b / 8192) / (a / 2048)
    out["lmul_over_fp32"] = {n: ms[("edgert-lmul", n)] / ms[("edgert-fp32", n)] for n in lengths
                             if ("edgert-lmul", n) in ms and ("edgert-fp32", n) in ms}
    out["lmul_over_fp32_per_round"] = {}
    for n in lengths:
        lm, fp = medians.get(("edgert-lmul", n), []), medians.get(("edgert-fp32", n), [])
        if lm and len(lm) == len(fp):
            x = np.array(lm) / np.array(fp)
            out["lmul_over_fp32_per_round"][n] = {"median": float(np.median(x)),
                                                  "min": float(x.min()), "max": float(x.max())}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", nargs="+", type=int, default=[128, 512, 2048, 8192])
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=list(RUNTIMES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds")
    parser.add_argument("--repeats", type=int, default=5, help="calls per point per round")
    parser.add_argument("--all-lengths", action="store_true",
                        help="time every runtime at every length (see LONGEST)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        built = build(args, Path(tmp))
        workers: dict[str, Worker] = {}
        try:
            for r, b in built.items():
                if b["error"] is None:
                    try:
                        workers[r] = Worker(runtime_worker, r, b["path"], args.threads)
                    except RuntimeError as e:
                        errors[r] = f"load: {e}"
            medians = time_rounds(workers, args, errors)
        except Exception:  # noqa: BLE001 - print what was measured so far
            traceback.print_exc()
            medians = {}
        finally:
            for w in workers.values():
                w.close()
    rows = summarize(built, medians, errors, args)
    print_table(rows)
    goals = targets(rows, args.lengths, medians)
    print(f"targets: {goals}")
    emit({"benchmark": "attention, one head group, d = 64 (speedup > 1: faster than "
          "onnxruntime fp32)", "threads": args.threads, "rounds": args.rounds,
          "repeats": args.repeats, "cpu_count": os.cpu_count(),
          "load_average": os.getloadavg(), "rows": rows, "targets": goals}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
