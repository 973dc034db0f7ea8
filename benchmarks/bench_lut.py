"""Low-bit LUT matmul (T-MAC, ``edgert.LutMatMul``) vs onnxruntime, beside the memory roofline.

    python benchmarks/bench_lut.py [--quick] [--shapes 4096x4096 ...] [--bits 1 2 3 4 ternary]
                                   [--m 1 8] [--threads 1 2] [--repeats 20] [--burst 8]
                                   [--rotate-mb 64] [--max-copies 64] [--json out.json]

Shapes (K x N, ``y[M, N] = x[M, K] @ W[K, N]``): Llama-2-7B projections 4096x4096, 4096x11008,
11008x4096 and BitNet-b1.58-3B 3200x3200, 3200x8640, 8640x3200 (``--quick``: 4096x4096 only).
For each shape one ONNX graph ``MatMul(x: float32 [M, K], W: const float32 [K, N])`` (M
symbolic, so one build serves every ``--m``) is run by:

- ``lut``: ``compile_model(..., weight_bits=b, group_size=128, threads=t)`` (64 where K is
  not a multiple of 128: BitNet's 8640; MatMulNBits uses the same block) (float32
  activations, int8 tables, the x86 AVX2 ``vpshufb`` kernel of ``ops/lut_matmul/tvm_x86.py``)
  through ``edgert.Session(threads=t).run``;
- ``lut-vm``: the same artifact's Relax VM ``main`` called directly on a TVM tensor (no input
  validation, no staging copy, no numpy output view): the kernel time plus one VM dispatch, so
  the Session overhead is the difference;
- ``<bits>dq`` rows: the same weights compiled with ``lut="never"``: the dequantize-then-multiply
  kernel (``ops/lut_matmul/tvm_dequant.py``), the alternative ``--lut auto`` times
  (``--kernels lut`` leaves it out);
- ``ort-nbits4``: onnxruntime ``MatMulNBits`` from ``MatMulNBitsQuantizer`` (4 bits, block 128,
  symmetric, ``accuracy_level=4``: int8 activations, MLAS's integer kernels);
- ``ort-fp32``: onnxruntime on the float graph itself;
- ``ggml-q4_0``, ``ggml-tq2_0``, ``ggml-tq1_0``: ggml's own CPU kernels (llama.cpp's code:
  Q4_0 4-bit, TQ2_0 / TQ1_0 ternary) on the same weights quantized by ggml, through the
  prebuilt AVX2 ggml of the PyPI wheel ``libggml-python`` (else llama-cpp-python's libggml;
  :class:`edgert.peers.GgmlMatMul`). Skipped, with a note, when neither is installed.

Cached vs rotated: "cached" calls one loaded copy again and again (a 4096x4096 2-bit weight is
4.7 MB: it sits in the L3 after the first call). "Rotated" calls ``C`` copies round robin, ``C``
chosen so the copies hold at least ``--rotate-mb`` (64 MB, twice this machine's 32 MB L3) of
weight bytes, at least 2: every call streams its weight from DRAM, as a model's layers do.
Each LUT artifact is compiled once per (shape, bits, threads); its copies are ``C`` Sessions
loading that one artifact: each loads its own library (a separate temporary file, separately
mapped and initialized), so each holds its own copy of the weight bytes at its own addresses;
the same values do not matter to the memory system. onnxruntime copies are ``C`` sessions of
one model file (each session packs its own weights).

Timing: the candidates of one (shape, M, threads) cell are interleaved by
:func:`edgert.timing.interleaved_latencies`; each candidate call is one untimed warm call (wakes
its runtime's thread pool, loads the copy that a cached burst reuses) then a timed burst of
``--burst`` calls (rotated: whole rounds over the copies), recorded as seconds per call.
Alternating runtimes call by call would make TVM's spinning pool and onnxruntime's threads fight
for the second core, which no model run sees. Reported: the median over ``--repeats`` bursts.

Roofline: the read bandwidth is measured here (best of several numpy reductions over a 256 MB
array, 1 and 2 threads); a kernel's roofline time is its weight bytes (packed bit planes plus
float32 group scales for LUT; 4-bit codes plus float32 scales for MatMulNBits; float32 for fp32)
over that bandwidth. ``pct_roofline`` = roofline time / measured rotated time.

Ratios are ``peer time / edgert time`` (> 1: edgert faster), rotated and cached, Session vs
``InferenceSession.run`` (both include their Python call overhead). The machine is shared:
``uptime``'s load is printed and stored; compare ratios within a run.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from common import emit

SHAPES = {"llama2-7b": [(4096, 4096), (4096, 11008), (11008, 4096)],
          "bitnet-3b": [(3200, 3200), (3200, 8640), (8640, 3200)]}
ALL_SHAPES = [s for group in SHAPES.values() for s in group]
BITS = ["1", "2", "3", "4", "ternary"]
GROUP_SIZE = 128


def group_size(k: int) -> int:
    """The weight group along K: 128, or the largest of 64 / 32 dividing K (BitNet's 8640)."""
    return next((g for g in (GROUP_SIZE, 64, 32) if k % g == 0), 32)


GGML_KERNELS = ("q4_0", "tq2_0", "tq1_0")


# ---------------------------------------------------------------- helpers

def parse_shape(text: str) -> tuple[int, int]:
    k, _, n = text.lower().partition("x")
    return int(k), int(n)


def shape_model(k: int, n: int, w: np.ndarray):
    from onnx import TensorProto as TP
    from onnx import helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
        [helper.make_tensor_value_info("x", TP.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("y", TP.FLOAT, ["M", n])],
        [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def nbits_model(src: Path, dst: Path, block: int = GROUP_SIZE) -> None:
    """onnxruntime's MatMulNBits (4-bit, block 128, symmetric, accuracy_level 4) of ``src``."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quant = MatMulNBitsQuantizer(onnx.load(str(src)), bits=4, block_size=block,
                                 is_symmetric=True, accuracy_level=4)
    quant.process()
    quant.model.save_model_to_file(str(dst), use_external_data_format=False)
    ops = [node.op_type for node in onnx.load(str(dst)).graph.node]
    if "MatMulNBits" not in ops:
        raise SystemExit(f"MatMulNBitsQuantizer left no MatMulNBits node: {ops}")


def lut_bytes(k: int, n: int, bits: str, kernel: str = "lut") -> int:
    """Weight bytes a call reads: packed planes (N padded to 32) + float32 group scales; the
    dequantize kernel: 3-bit codes take 4 bits, and a float32 zero term per scale."""
    b = 2 if bits == "ternary" else int(bits)
    n_pad = -(-n // 32) * 32
    if kernel == "dequant":
        return k * n_pad * (4 if b == 3 else b) // 8 + (k // group_size(k)) * n_pad * 8
    return k * n_pad * b // 8 + (k // group_size(k)) * n * 4


def variants(args: argparse.Namespace) -> dict[str, tuple[str, str]]:
    """Row label -> (bits, kernel): ``4`` (table lookup), ``4dq`` (dequantize)."""
    return {f"{b}{'' if kern == 'lut' else 'dq'}": (b, kern)
            for b in args.bits for kern in args.kernels}


def nbits_bytes(k: int, n: int) -> int:
    return k * n // 2 + (k // group_size(k)) * n * 4


def read_bandwidth(threads: int, mb: int = 256, tries: int = 5) -> float:
    """Best read bandwidth (bytes/s) of a few numpy reductions over ``mb`` MB, split over
    ``threads`` Python threads (numpy releases the GIL in reductions)."""
    a = np.ones(mb * 2**20 // 8, np.float64)
    reducers = [lambda v: v.sum(), lambda v: np.bitwise_or.reduce(v.view(np.int64)),
                lambda v: v.view(np.float32).max()]
    parts = np.array_split(np.arange(len(a)), threads)
    chunks = [(int(p[0]), int(p[-1]) + 1) for p in parts]
    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        for red in reducers:
            for _ in range(tries):
                t0 = time.perf_counter()
                list(pool.map(lambda c: red(a[c[0]:c[1]]), chunks))
                best = max(best, a.nbytes / (time.perf_counter() - t0))
    return best


def load_avg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class Burst:
    """One candidate: ``__call__`` does an untimed warm call, then times ``n`` calls (round
    robin over ``fns``) and records seconds per call; then calls ``after`` (untimed: ggml's
    pool is put to sleep so that its polling threads leave the cores to the next one)."""

    def __init__(self, fns: list, burst: int, after: Callable[[], None] | None = None) -> None:
        self.fns, self.after = fns, after
        self.n = max(1, math.ceil(burst / len(fns))) * len(fns)
        self.samples: list[float] = []

    def __call__(self) -> None:
        fns, n = self.fns, self.n
        fns[-1]()
        t0 = time.perf_counter()
        for i in range(n):
            fns[i % len(fns)]()
        self.samples.append((time.perf_counter() - t0) / n)
        if self.after is not None:
            self.after()


def copies_for(nbytes: int, args: argparse.Namespace) -> int:
    return int(min(args.max_copies, max(2, math.ceil(args.rotate_mb * 2**20 / nbytes))))


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


# ---------------------------------------------------------------- one shape

def bench_shape(k: int, n: int, args: argparse.Namespace, bw: dict[int, float], tmp: Path,
                rng: np.random.Generator) -> list[dict]:
    import tvm

    import edgert
    from edgert.compiler import compile_model
    from edgert.peers import GgmlMatMul, onnxruntime_session
    from edgert.timing import interleaved_latencies, summarize

    config_pool = tvm.get_global_func("runtime.config_threadpool")
    w = (rng.standard_normal((k, n)) * 0.02).astype(np.float32)
    fp_path, nb_path = tmp / f"mm_{k}x{n}.onnx", tmp / f"mm_{k}x{n}_nbits.onnx"
    fp_path.write_bytes(shape_model(k, n, w).SerializeToString())
    t0 = time.perf_counter()
    with contextlib.chdir(tmp):
        nbits_model(fp_path, nb_path, group_size(k))
    print(f"  {k}x{n}: MatMulNBits quantization {time.perf_counter() - t0:.1f} s", flush=True)
    xs = {m: rng.standard_normal((m, k)).astype(np.float32) for m in args.m}
    want = {m: xs[m] @ w for m in args.m}
    rows = []
    for threads in args.threads:
        config_pool(1, threads)
        # -- build / load every candidate's copies
        arts, build_s, var = {}, {}, variants(args)
        for label, (bits, kern) in var.items():
            t0 = time.perf_counter()
            arts[label] = compile_model(fp_path, tmp / f"lut_{k}x{n}_{label}_t{threads}.edgert",
                                        weight_bits=bits, group_size=group_size(k), threads=threads,
                                        lut="always" if kern == "lut" else "never")
            build_s[label] = time.perf_counter() - t0
        n_copies = {label: copies_for(lut_bytes(k, n, *bk), args) for label, bk in var.items()}
        n_copies["ort-nbits4"] = copies_for(nbits_bytes(k, n), args)
        n_copies["ort-fp32"] = copies_for(4 * k * n, args)
        sessions = {label: [edgert.Session(arts[label], threads=threads)
                            for _ in range(n_copies[label])] for label in var}
        ort = {"ort-nbits4": [onnxruntime_session(nb_path, threads)
                              for _ in range(n_copies["ort-nbits4"])],
               "ort-fp32": [onnxruntime_session(fp_path, threads)
                            for _ in range(n_copies["ort-fp32"])]}
        print(f"  {k}x{n} t={threads}: built LUT artifacts in "
              + ", ".join(f"{b}: {s:.1f} s" for b, s in build_s.items())
              + "; copies " + ", ".join(f"{b}: {c}" for b, c in n_copies.items()), flush=True)
        for m in args.m:
            x = xs[m]
            x_tvm = tvm.runtime.tensor(x)
            errors = {}
            cands: dict[str, Burst] = {}
            for bits in var:                                 # the row label
                ss = sessions[bits]
                errors[bits] = rel_err(ss[0].run(None, {"x": x})[0], want[m])
                vms = [s._backend._main for s in ss]          # noqa: SLF001 - the bare VM call
                run = [lambda s=s: s.run(None, {"x": x}) for s in ss]
                bare = [lambda f=f: f(x_tvm) for f in vms]
                cands[f"lut{bits}/session/cached"] = Burst(run[:1], args.burst)
                cands[f"lut{bits}/vm/cached"] = Burst(bare[:1], args.burst)
                cands[f"lut{bits}/session/rotated"] = Burst(run, args.burst)
                cands[f"lut{bits}/vm/rotated"] = Burst(bare, args.burst)
            for name, ss in ort.items():
                errors[name] = rel_err(ss[0].run(None, {"x": x})[0], want[m])
                run = [lambda s=s: s.run(None, {"x": x}) for s in ss]
                cands[f"{name}/cached"] = Burst(run[:1], args.burst)
                cands[f"{name}/rotated"] = Burst(run, args.burst)
            ggml = {}                                  # ggml graphs are built for M rows
            for qt in (GGML_KERNELS if args.ggml else ()):
                first = GgmlMatMul(w, qt, m, threads)
                ggml[qt] = [first] + [GgmlMatMul(w, qt, m, threads)
                                      for _ in range(copies_for(first.weight_bytes, args) - 1)]
                errors[f"ggml-{qt}"] = rel_err(first.run(x), want[m])
                run = [lambda g=g: g.run(x) for g in ggml[qt]]
                cands[f"ggml-{qt}/cached"] = Burst(run[:1], args.burst, first.pause)
                cands[f"ggml-{qt}/rotated"] = Burst(run, args.burst, first.pause)
            load = load_avg()
            t0 = time.perf_counter()
            interleaved_latencies(cands, repeats=args.repeats, warmup=1)
            med = {name: summarize(np.array(c.samples[1:]))["p50_ms"]
                   for name, c in cands.items()}               # samples[0]: the warmup call
            wall = time.perf_counter() - t0
            peer = {"ort-nbits4": {v: med[f"ort-nbits4/{v}"] for v in ("cached", "rotated")},
                    "ort-fp32": {v: med[f"ort-fp32/{v}"] for v in ("cached", "rotated")}}
            nb_roof = nbits_bytes(k, n) / bw[threads] * 1e3
            for bits, (wbits, kern) in var.items():
                roof = lut_bytes(k, n, wbits, kern) / bw[threads] * 1e3
                t = {f"{api}_{v}_ms": med[f"lut{bits}/{api}/{v}"]
                     for api in ("session", "vm") for v in ("cached", "rotated")}
                row = {"K": k, "N": n, "M": m, "threads": threads, "bits": bits,
                       "kernel": kern, "weight_bytes": lut_bytes(k, n, wbits, kern),
                       "group_size": group_size(k),
                       "copies": n_copies[bits],
                       "compile_s": build_s[bits], **t,
                       "ort_nbits4_cached_ms": peer["ort-nbits4"]["cached"],
                       "ort_nbits4_rotated_ms": peer["ort-nbits4"]["rotated"],
                       "ort_nbits4_copies": n_copies["ort-nbits4"],
                       "ort_fp32_cached_ms": peer["ort-fp32"]["cached"],
                       "ort_fp32_rotated_ms": peer["ort-fp32"]["rotated"],
                       "ort_fp32_copies": n_copies["ort-fp32"],
                       "roofline_ms": roof, "ort_nbits4_roofline_ms": nb_roof,
                       "bandwidth_gbs": bw[threads] / 1e9,
                       "pct_roofline_session": 100 * roof / t["session_rotated_ms"],
                       "pct_roofline_vm": 100 * roof / t["vm_rotated_ms"],
                       "ort_nbits4_pct_roofline": 100 * nb_roof / peer["ort-nbits4"]["rotated"],
                       "vs_ort_nbits4_rotated": peer["ort-nbits4"]["rotated"]
                       / t["session_rotated_ms"],
                       "vs_ort_nbits4_cached": peer["ort-nbits4"]["cached"]
                       / t["session_cached_ms"],
                       "vs_ort_fp32_rotated": peer["ort-fp32"]["rotated"]
                       / t["session_rotated_ms"],
                       "vs_ort_fp32_cached": peer["ort-fp32"]["cached"] / t["session_cached_ms"],
                       "session_overhead_ms": t["session_cached_ms"] - t["vm_cached_ms"],
                       "rel_err_vs_fp32": errors[bits],
                       "ort_nbits4_rel_err_vs_fp32": errors["ort-nbits4"],
                       "loadavg": load}
                for qt, gs in ggml.items():
                    g_rot, g_cached = med[f"ggml-{qt}/rotated"], med[f"ggml-{qt}/cached"]
                    row |= {f"ggml_{qt}_rotated_ms": g_rot, f"ggml_{qt}_cached_ms": g_cached,
                            f"ggml_{qt}_copies": len(gs), f"ggml_{qt}_bytes": gs[0].weight_bytes,
                            f"ggml_{qt}_pct_roofline":
                                100 * gs[0].weight_bytes / bw[threads] * 1e3 / g_rot,
                            f"ggml_{qt}_rel_err_vs_fp32": errors[f"ggml-{qt}"],
                            f"vs_ggml_{qt}_rotated": g_rot / t["session_rotated_ms"],
                            f"vs_ggml_{qt}_cached": g_cached / t["session_cached_ms"]}
                rows.append(row)
            print(f"  {k}x{n} M={m} t={threads}: timed in {wall:.1f} s (load {load})",
                  flush=True)
            del ggml
        del sessions, ort
    return rows


# ---------------------------------------------------------------- output

def print_table(rows: list[dict]) -> None:
    cols = [("KxN", 12), ("M", 3), ("thr", 4), ("bits", 8), ("lut rot", 9), ("vm rot", 9),
            ("lut $", 9), ("vm $", 9), ("nb4 rot", 9), ("nb4 $", 9), ("fp32 rot", 9),
            ("roof", 8), ("%roof", 7), ("%roofvm", 8), ("x nb4", 7), ("x nb4$", 7),
            ("x fp32", 7), ("t/t4", 6), ("err", 6), ("q4_0 rot", 9), ("tq2 rot", 8),
            ("x q4_0", 7), ("x tq2", 6)]
    print("".join(f"{name:>{w}}" for name, w in cols))
    t4 = {(r["K"], r["N"], r["M"], r["threads"]): r["vm_rotated_ms"]
          for r in rows if r["bits"] == "4"}
    for r in rows:
        key = (r["K"], r["N"], r["M"], r["threads"])
        lin = r["vm_rotated_ms"] / t4[key] if key in t4 else float("nan")
        vals = [f"{r['K']}x{r['N']}", r["M"], r["threads"], r["bits"],
                f"{r['session_rotated_ms']:.3f}", f"{r['vm_rotated_ms']:.3f}",
                f"{r['session_cached_ms']:.3f}", f"{r['vm_cached_ms']:.3f}",
                f"{r['ort_nbits4_rotated_ms']:.3f}", f"{r['ort_nbits4_cached_ms']:.3f}",
                f"{r['ort_fp32_rotated_ms']:.3f}", f"{r['roofline_ms']:.3f}",
                f"{r['pct_roofline_session']:.0f}%", f"{r['pct_roofline_vm']:.0f}%",
                f"{r['vs_ort_nbits4_rotated']:.2f}", f"{r['vs_ort_nbits4_cached']:.2f}",
                f"{r['vs_ort_fp32_rotated']:.2f}", f"{lin:.2f}", f"{r['rel_err_vs_fp32']:.3f}"]
        vals += [f"{r[key]:.3f}" if key in r else "-" for key in
                 ("ggml_q4_0_rotated_ms", "ggml_tq2_0_rotated_ms")]
        vals += [f"{r[key]:.2f}" if key in r else "-" for key in
                 ("vs_ggml_q4_0_rotated", "vs_ggml_tq2_0_rotated")]
        print("".join(f"{v:>{w}}" for v, (_, w) in zip(vals, cols)))
    print("times: median ms per call. rot = rotated over copies (DRAM), $ = one copy (cached); "
          "lut = edgert Session.run, vm = the VM's main called directly; nb4 = ORT "
          "MatMulNBits 4-bit; roof = LUT weight bytes / measured read bandwidth; %roof = roof / "
          "rotated time; x nb4 / x fp32 = ORT time / edgert Session time (> 1: edgert faster); "
          "t/t4 = vm rotated time / 4-bit LUT's; err = relative error vs fp32 x @ W; bits "
          "'4dq' = the dequantize kernel on the same 4-bit weights; q4_0 / tq2 = ggml's Q4_0 "
          "and TQ2_0 kernels (rotated), x q4_0 / x tq2 = their time / edgert's")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4096x4096 only")
    parser.add_argument("--shapes", nargs="+", help="K x N, e.g. 4096x11008 (default: all six)")
    parser.add_argument("--bits", nargs="+", default=BITS, choices=BITS)
    parser.add_argument("--kernels", nargs="+", default=["lut", "dequant"],
                        choices=["lut", "dequant"], help="table lookup and/or dequantize")
    parser.add_argument("--m", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=20, help="timed bursts per candidate")
    parser.add_argument("--burst", type=int, default=8, help="calls per timed burst")
    parser.add_argument("--rotate-mb", type=float, default=64,
                        help="weight bytes the rotated copies hold together, at least")
    parser.add_argument("--max-copies", type=int, default=64)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    shapes = ([(4096, 4096)] if args.quick else
              [parse_shape(s) for s in args.shapes] if args.shapes else ALL_SHAPES)
    os.environ.setdefault("TVM_NUM_THREADS", str(max(args.threads)))

    from edgert.peers import libggml_dir

    try:
        args.ggml = True
        ggml_note = f"ggml: {libggml_dir()[1]}, kernels " + ", ".join(GGML_KERNELS)
    except ImportError as e:
        args.ggml, ggml_note = False, f"ggml not run: {e}"
    print(ggml_note)
    t_start = time.perf_counter()
    print(f"load at start {load_avg()}; measuring read bandwidth ...", flush=True)
    bw = {t: read_bandwidth(t) for t in sorted(set(args.threads))}
    print("read bandwidth: " + ", ".join(f"{t} thread(s) {v / 1e9:.1f} GB/s"
                                         for t, v in bw.items()), flush=True)
    rng = np.random.default_rng(0)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-lut-") as tmp_dir:
        for k, n in shapes:
            rows += bench_shape(k, n, args, bw, Path(tmp_dir), rng)
    print()
    print_table(rows)
    import onnxruntime

    result = {"benchmark": "LutMatMul (float32 activations) vs onnxruntime, median ms per call",
              "machine": {"cpu": cpu_name(),
                          "cpus": os.cpu_count(), "loadavg_end": load_avg()},
              "onnxruntime": onnxruntime.__version__, "group_size": GROUP_SIZE,
              "read_bandwidth_gbs": {str(t): v / 1e9 for t, v in bw.items()},
              "ggml": ggml_note, "rotate_mb": args.rotate_mb, "burst": args.burst,
              "repeats": args.repeats, "wall_s": time.perf_counter() - t_start, "rows": rows}
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
