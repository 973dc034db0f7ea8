"""edgert under contention: its time beside busy processes and beside a spinning onnxruntime,
per thread policy (``EDGERT_THREAD_POLICY``, :mod:`edgert.threads`).

    python benchmarks/bench_contention.py [--rounds 5] [--calls 200]
                                          [--policies tvm nospin unbound yield] [--json out.json]

Two models are compiled once: the built-in digits ViT (``edgert/data/vit_digits.onnx``, fp32,
batch 1) and a 2-bit LUT GEMV (``MatMul`` 1x4096 @ 4096x4096, ``weight_bits=2``, group 128).
Each policy runs in its own spawned process (TVM reads its pool's variables once, when the
pool starts), plus ``<default>/1t``: the default policy with ``Session(threads=1)``. Each
process holds both models' Sessions (default threads: the physical cores) and one
onnxruntime session of the ViT with onnxruntime's default options (its intra-op threads spin).

Scenarios, in every round, for every process in turn (its order rotated per round, 0.5 s of
quiet between processes so an idle pool's spinning does not land on the next one):

- ``alone``: nothing else runs (on this machine: nothing started by the benchmark);
- ``busy1`` / ``busy2``: 1 / 2 CPU-bound processes (``while True: pass``) beside it;
- ``ort``: in the same process, every edgert call follows an onnxruntime run (only edgert's
  call is timed).

A cell is ``--calls`` timed calls after 10 untimed ones; its value is their median. Reported per
policy and model: the alone median (µs, and its range over rounds) and for each scenario the
ratio to the same round's alone time: median and range over rounds; and, per scenario, the
thread count each round's cell ended with (the adaptive policy's choice; the session's count
otherwise).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import emit
from processes import Worker, serve

SCENARIOS = ("alone", "busy1", "busy2", "ort")
USER_ENV = dict(os.environ)          # before edgert's import sets its TVM defaults
K = N = 4096


def gemv_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto as TP
    from onnx import helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((K, N)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "gemv",
        [helper.make_tensor_value_info("x", TP.FLOAT, [1, K])],
        [helper.make_tensor_value_info("y", TP.FLOAT, [1, N])],
        [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), path)
    return path


def runtime_worker(conn: Any, artifacts: dict[str, str], vit_onnx: str, threads: int | None) -> None:
    """One policy's process: answers ("measure", (model, scenario, calls)) with the median
    seconds of one edgert call and the thread count the session ended the cell with
    (:func:`processes.serve`)."""
    rng = np.random.default_rng(1)
    feeds = {"vit": {"image": rng.standard_normal((1, 1, 8, 8)).astype(np.float32)},
             "gemv": {"x": rng.standard_normal((1, K)).astype(np.float32)}}

    def load() -> tuple[dict[str, Any], Any]:
        import onnxruntime as ort

        import edgert

        sessions = {name: edgert.Session(path, threads=threads) for name, path in artifacts.items()}
        return sessions, ort.InferenceSession(vit_onnx, providers=["CPUExecutionProvider"])

    def measure(loaded: tuple[dict[str, Any], Any], cmd: str,
                arg: tuple[str, str, int]) -> tuple[float, int]:
        sessions, peer = loaded
        model, scenario, calls = arg
        sess, feed = sessions[model], feeds[model]
        times = []
        for i in range(calls + 10):
            if scenario == "ort":
                peer.run(None, feeds["vit"])
            t0 = time.perf_counter()
            sess.run(None, feed)
            if i >= 10:
                times.append(time.perf_counter() - t0)
        chooser = getattr(sess._backend, "_adaptive", None)   # the adaptive policy's choice
        used = chooser.best if chooser else sess._backend.threads
        return statistics.median(times), used

    serve(conn, load, measure)


def start_busy(n: int) -> list[subprocess.Popen]:
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    time.sleep(0.3)
    return procs


def stop_busy(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def spawn(policy: str, artifacts: dict[str, str], vit_onnx: str) -> Worker:
    """A worker process whose environment is the user's plus the policy (``/1t``: 1 thread)."""
    name, _, one = policy.partition("/")
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update({k: v for k, v in USER_ENV.items() if k != "EDGERT_THREAD_POLICY"})
    os.environ["EDGERT_THREAD_POLICY"] = name
    try:
        return Worker(runtime_worker, artifacts, vit_onnx, 1 if one else None)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def summary(cells: dict, policies: list[str], models: list[str]) -> list[dict]:
    rows = []
    for pol in policies:
        for model in models:
            alone = cells[pol][model]["alone"]
            row = {"policy": pol, "model": model,
                   "alone_us": 1e6 * statistics.median(alone),
                   "alone_us_range": [1e6 * min(alone), 1e6 * max(alone)],
                   "threads": {sc: cells[pol][model][sc + "_threads"] for sc in SCENARIOS}}
            for sc in SCENARIOS[1:]:
                ratios = [t / a for t, a in zip(cells[pol][model][sc], alone)]
                row[sc] = statistics.median(ratios)
                row[sc + "_range"] = [min(ratios), max(ratios)]
            rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'policy':<12}{'model':<6}{'alone us (range)':>24}"
          + "".join(f"{sc + ' x (range)':>22}" for sc in SCENARIOS[1:]) + "  threads at the end")
    for r in rows:
        lo, hi = r["alone_us_range"]
        line = f"{r['policy']:<12}{r['model']:<6}{r['alone_us']:>9.0f} ({lo:>5.0f}-{hi:>6.0f})"
        for sc in SCENARIOS[1:]:
            a, b = r[sc + "_range"]
            line += f"{r[sc]:>9.2f} ({a:>4.2f}-{b:>5.2f})"
        used = " ".join(f"{sc}:{''.join(map(str, r['threads'][sc]))}" for sc in SCENARIOS)
        print(line + "  " + used)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--policies", nargs="+", default=None,
                        help="EDGERT_THREAD_POLICY names (default: all, plus <default>/1t)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    from edgert.compiler import compile_model
    from edgert.threads import DEFAULT_POLICY, POLICIES

    policies = args.policies or [*POLICIES, f"{DEFAULT_POLICY}/1t"]
    repo = Path(__file__).resolve().parents[1]
    vit_onnx = str(repo / "edgert" / "data" / "vit_digits.onnx")
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        t0 = time.perf_counter()
        artifacts = {
            "vit": str(compile_model(vit_onnx, tmp / "vit.edgert")),
            "gemv": str(compile_model(gemv_onnx(tmp / "gemv.onnx"), tmp / "gemv.edgert",
                                      weight_bits="2", group_size=128)),
        }
        print(f"compiled in {time.perf_counter() - t0:.0f} s; load {os.getloadavg()[0]:.2f}", flush=True)
        workers = {p: spawn(p, artifacts, vit_onnx) for p in policies}
        models = list(artifacts)
        cells = {p: {m: {key: [] for sc in SCENARIOS for key in (sc, sc + "_threads")}
                     for m in models} for p in policies}
        try:
            for r in range(args.rounds):
                for sc in SCENARIOS:
                    busy = start_busy({"busy1": 1, "busy2": 2}.get(sc, 0))
                    try:
                        order = policies[r % len(policies):] + policies[:r % len(policies)]
                        for pol in order:
                            for model in models:
                                median, used = workers[pol].call("measure", (model, sc, args.calls))
                                cells[pol][model][sc].append(median)
                                cells[pol][model][sc + "_threads"].append(used)
                            time.sleep(0.5)
                    finally:
                        stop_busy(busy)
                print(f"round {r + 1}/{args.rounds} done", flush=True)
        finally:
            for w in workers.values():
                w.close()
    rows = summary(cells, policies, models)
    print_table(rows)
    result = {"benchmark": "edgert under contention (ratios to alone, same policy)",
              "load_avg": os.getloadavg(), "cpus": os.cpu_count(), "rounds": args.rounds,
              "calls": args.calls, "rows": rows}
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
