"""Integer matmul kernels: edgert's x86 AVX2 kernel vs TVM's default build vs onnxruntime.

    python benchmarks/bench_matmul_int.py [--threads 1 2] [--seconds 0.3] [--json out.json]

For each (M, K, N), one ONNX graph ``MatMulInteger(x: int8 [M, K], W: int8 [K, N]) -> int32``
with W a constant (a Linear layer), compiled four ways, all timed interleaved in one process
(compare ratios, not absolute times: this machine is shared):

- ``edgert-x86``: ``build_library`` for the host target (the vpmaddwd kernel of
  ``compiler/schedule_intmatmul.py``, W packed at compile time), built for the thread count;
- ``tvm-default``: the same Relax module through ``tvm.compile`` alone (TVM's default CPU
  pipeline, which schedules nothing: what edgert did before);
- ``ort-int8``: onnxruntime ``MatMulInteger`` on the same graph;
- ``ort-fp32``: onnxruntime ``MatMul`` on float32 operands of the same shapes.

The TVM runs go through the Relax VM with the input already a TVM tensor; onnxruntime through
``InferenceSession.run`` (thread-pool spinning off, see ``edgert.peers``). TVM's thread pool is
sized once per process (``TVM_NUM_THREADS``, set here to the largest ``--threads`` before TVM
loads: without it TVM uses half the logical CPUs, i.e. 1 thread on a 2-CPU machine, whatever
``runtime.config_threadpool`` asks later) and narrowed per run with ``config_threadpool``.
Candidates take turns in bursts of calls (see :func:`timed`): call-by-call alternation makes
TVM's spinning pool worker and onnxruntime's threads fight for the second core, which no model
run sees. GOPS = 2*M*K*N / median time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPES = [(128, 384, 384), (128, 384, 1536), (128, 1536, 384), (1, 384, 384), (8, 64, 64),
          (256, 512, 512)]
NAMES = ["edgert-x86", "tvm-default", "ort-int8", "ort-fp32"]


def matmul_models(m: int, k: int, n: int, rng: np.random.Generator):
    """(int8 MatMulInteger model, fp32 MatMul model, int8 weight)."""
    from onnx import TensorProto as TP
    from onnx import helper, numpy_helper

    w = rng.integers(-127, 128, (k, n), dtype=np.int8)

    def model(op: str, elem: int, out_elem: int, weight: np.ndarray):
        graph = helper.make_graph(
            [helper.make_node(op, ["x", "w"], ["y"])], "mm",
            [helper.make_tensor_value_info("x", elem, [m, k])],
            [helper.make_tensor_value_info("y", out_elem, [m, n])],
            [numpy_helper.from_array(weight, "w")])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])

    return (model("MatMulInteger", TP.INT8, TP.INT32, w),
            model("MatMul", TP.FLOAT, TP.FLOAT, w.astype(np.float32)), w)


def load_vm(lib_bytes: bytes, tmp: Path, name: str):
    import tvm
    from tvm.runtime.vm import VirtualMachine

    path = tmp / f"{name}.so"
    path.write_bytes(lib_bytes)
    return VirtualMachine(tvm.runtime.load_module(str(path)), tvm.cpu())["main"]


def default_build(mod, target, threads: int) -> bytes:
    """TVM's default pipeline alone (no edgert kernels), as a library."""
    import tvm

    ex = tvm.compile(mod, target=tvm.target.Target(target.tvm_target_dict(num_cores=threads)))
    with tempfile.TemporaryDirectory() as tmp:
        ex.export_library(os.path.join(tmp, "lib.so"))
        return Path(tmp, "lib.so").read_bytes()


def timed(fns: dict, seconds: float, burst: int) -> dict[str, float]:
    """Median seconds of one call of each callable. Candidates take turns, ``burst`` calls at
    a time (A A A B B B ... A A A): drift in machine load hits all alike, while each runtime's
    thread pool runs as it does inside a model, call after call. Each candidate gets about
    ``seconds`` of calls."""
    probe = {}
    for name, fn in fns.items():
        fn()
        t0 = time.perf_counter()
        fn()
        probe[name] = time.perf_counter() - t0
    times: dict[str, list[float]] = {name: [] for name in fns}
    rounds = {name: int(min(400, max(3, seconds / max(t, 1e-7) / burst)))
              for name, t in probe.items()}
    for r in range(max(rounds.values())):
        for name, fn in fns.items():
            if r >= rounds[name]:
                continue
            fn()                                   # wakes this runtime's pool; not counted
            for _ in range(burst):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(v)) for name, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=0.3,
                        help="time budget of each candidate per cell")
    parser.add_argument("--burst", type=int, default=5, help="consecutive calls per turn")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    os.environ.setdefault("TVM_NUM_THREADS", str(max(args.threads)))

    import tvm

    from edgert.compiler.lower import build_library, to_relax
    from edgert.ops import intmatmul
    from edgert.peers import onnxruntime_session
    from edgert.targets import resolve_host

    target = resolve_host()
    config_pool = tvm.get_global_func("runtime.config_threadpool")
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        for m, k, n in SHAPES:
            int_model, fp_model, w = matmul_models(m, k, n, rng)
            x8 = rng.integers(-128, 128, (m, k), dtype=np.int8)
            x32 = x8.astype(np.float32)
            want = intmatmul.reference(x8, w)
            x_tvm = tvm.runtime.tensor(x8)
            int_path, fp_path = tmp / f"i{m}_{k}_{n}.onnx", tmp / f"f{m}_{k}_{n}.onnx"
            int_path.write_bytes(int_model.SerializeToString())
            fp_path.write_bytes(fp_model.SerializeToString())
            for threads in args.threads:
                mod = to_relax(int_model)
                t0 = time.perf_counter()
                tag = f"{m}_{k}_{n}_{threads}"        # one file each: a loaded .so stays mapped
                ours = load_vm(build_library(mod, target, threads=threads), tmp, f"e{tag}")
                build_s = time.perf_counter() - t0
                default = load_vm(default_build(mod, target, threads), tmp, f"d{tag}")
                ort8 = onnxruntime_session(int_path, threads)
                ort32 = onnxruntime_session(fp_path, threads)
                config_pool(1, threads)
                for name, got in [("edgert-x86", ours(x_tvm).numpy()),
                                  ("tvm-default", default(x_tvm).numpy()),
                                  ("ort-int8", ort8.run(None, {"x": x8})[0])]:
                    if not np.array_equal(got, want):
                        raise SystemExit(f"{name} differs from the reference at {m}x{k}x{n}")
                fns = {"edgert-x86": lambda: ours(x_tvm), "tvm-default": lambda: default(x_tvm),
                       "ort-int8": lambda: ort8.run(None, {"x": x8}),
                       "ort-fp32": lambda: ort32.run(None, {"x": x32})}
                med = timed(fns, args.seconds, args.burst)
                ops = 2.0 * m * k * n
                row = {"M": m, "K": k, "N": n, "threads": threads, "edgert_build_s": build_s}
                for name in NAMES:
                    row[f"{name}_ms"] = med[name] * 1e3
                    row[f"{name}_gops"] = ops / med[name] / 1e9
                rows.append(row)
                print(f"{m}x{k}x{n} t={threads}: " + "  ".join(
                    f"{name} {row[f'{name}_ms']:.4f} ms" for name in NAMES), flush=True)

    print()
    head = f"{'M x K x N':<16}{'thr':>4}" + "".join(f"{name:>22}" for name in NAMES)
    print(head + f"{'fp32/ours':>11}{'ort8/ours':>11}{'default/ours':>14}")
    print(f"{'':<20}" + "".join(f"{'ms':>12}{'GOPS':>10}" for _ in NAMES))
    for r in rows:
        cells = "".join(f"{r[f'{name}_ms']:>12.4f}{r[f'{name}_gops']:>10.1f}" for name in NAMES)
        ours, shape = r["edgert-x86_ms"], f"{r['M']}x{r['K']}x{r['N']}"
        print(f"{shape:<16}{r['threads']:>4}{cells}"
              f"{r['ort-fp32_ms'] / ours:>10.2f}x{r['ort-int8_ms'] / ours:>10.2f}x"
              f"{r['tvm-default_ms'] / ours:>13.1f}x")
    print("ratios > 1: edgert-x86 is faster than that peer")
    result = {"benchmark": "int8 matmul with a constant weight, median latency", "rows": rows,
              "tvm_num_threads": os.environ.get("TVM_NUM_THREADS")}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
