"""Low-bit LUT matmuls (T-MAC, ``edgert.LutMatMul``) vs onnxruntime and ggml, beside the roofline.

    python benchmarks/bench_lut.py [--quick] [--shapes 4096x4096 ...] [--bits 1 2 3 4 ternary]
                                   [--kernels lut dequant] [--m 1 8] [--threads 1 2]
                                   [--rounds 5] [--repeats 5] [--burst 8] [--rotate-mb 64]
                                   [--max-copies 64] [--policy tvm] [--json out.json]
                                   [--build-only DIR] [--before-artifacts DIR]

Shapes (K x N, ``y[M, N] = x[M, K] @ W[K, N]``): Llama-2-7B projections 4096x4096, 4096x11008,
11008x4096 and BitNet-b1.58-3B 3200x3200, 3200x8640, 8640x3200 (``--quick``: 4096x4096 only).
For each shape one ONNX graph ``MatMul(x: float32 [M, K], W: const float32 [K, N])`` (M
symbolic, so one build serves every ``--m``) is run by:

- ``lut``: ``compile_model(..., weight_bits=b, group_size=128, threads=t)`` (64 where K is
  not a multiple of 128: BitNet's 8640; MatMulNBits uses the same block) (float32
  activations, int8 tables, the x86 ``vpshufb`` kernel of ``ops/lut_matmul/tvm_x86.py``)
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
chosen so the copies hold at least ``--rotate-mb`` (64 MB, twice a 32 MB L3) of weight bytes,
at least 2: every call streams its weight from DRAM, as a model's layers do. A LUT copy is a
Session loading the one artifact: each loads its own library (a separate temporary file,
separately mapped and initialized), so each holds its own weight bytes at its own addresses.
onnxruntime copies are sessions of one model file (each packs its own weights).

Processes and rounds: every candidate runs in a process of its own (``processes.Worker``): the
LUT copies of one width and kernel, onnxruntime MatMulNBits, onnxruntime fp32, each ggml
kernel. A round asks each process in turn (the order reversed every other round) to time its
calls at every ``--m``; then this process measures the read bandwidth. In a round a process
times ``--repeats`` bursts of each of its modes (cached / rotated; Session / bare VM), the
modes alternating burst by burst; a burst is one untimed warm call then ``--burst`` timed calls
(rotated: whole rounds over the copies). Its answer is the median seconds per call of each mode
over those bursts. Between two processes this one waits ``--settle`` seconds: TVM's pool spins
for up to about 0.3 s after a run and would take a core from the next process (ggml's pool is
paused after each burst, onnxruntime's spinning is off). Reported: the median over the rounds and
its range; every ratio is taken within a round (the peer's time over edgert's in that round)
and reported as its median [min-max] over the rounds.

Threads: the LUT processes run under ``EDGERT_THREAD_POLICY=--policy`` (default ``tvm``: every
call on the session's ``t`` threads, as onnxruntime's and ggml's calls are; edgert's default
``adaptive`` may drop to one thread on a busy machine, which a kernel benchmark should not mix
in).

Roofline: the read bandwidth is measured once per round (best of several numpy reductions over a
256 MB array, on ``t`` threads); a kernel's roofline time is its weight bytes (packed bit planes
plus float16 group scales for LUT; 4-bit codes plus float32 scales for MatMulNBits; float32 for
fp32) over that round's bandwidth. ``%roof`` = roofline time / rotated time, the share of the
machine's read bandwidth the kernel reached (median over rounds).

Before / after: ``--build-only DIR`` compiles the LUT artifacts into ``DIR`` and stops (run it
with an earlier edgert on the path); ``--before-artifacts DIR`` then times them as extra
candidates (``<bits>-before``) in the same rounds, and prints this build's time over the
earlier one's, taken within each round.

Ratios are ``peer time / edgert time`` (> 1: edgert faster), rotated and cached, Session vs
``InferenceSession.run`` (both include their Python call overhead). The machine may be shared:
``/proc/loadavg`` is printed per round and stored.
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
from typing import Any

import numpy as np

from common import emit
from processes import Worker, serve

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
    """Weight bytes a call reads: packed planes (N padded to 32) + float16 group scales (the
    float variant's scales are float16 numbers, stored as float16 by the x86 kernels); the
    dequantize kernel: 3-bit codes take 4 bits, a float32 scale and zero term per group."""
    b = 2 if bits == "ternary" else int(bits)
    n_pad = -(-n // 32) * 32
    if kernel == "dequant":
        return k * n_pad * (4 if b == 3 else b) // 8 + (k // group_size(k)) * n_pad * 8
    return k * n_pad * b // 8 + (k // group_size(k)) * n_pad * 2


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


def has_flag(flag: str) -> bool:
    """Whether /proc/cpuinfo lists the CPU flag ``flag``."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(line.startswith("flags") and flag in line.split() for line in text.splitlines())


def copies_for(nbytes: int, rotate_mb: float, max_copies: int) -> int:
    """Copies that hold at least ``rotate_mb`` MB of weight bytes together (2 .. max_copies)."""
    return int(min(max_copies, max(2, math.ceil(rotate_mb * 2**20 / nbytes))))


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


# ---------------------------------------------------------------- the runtime processes

def time_modes(modes: dict[str, list[Callable[[], Any]]], burst: int, repeats: int,
               after: Callable[[], None] | None = None) -> dict[str, float]:
    """Median seconds per call of each mode over ``repeats`` bursts, the modes alternating
    burst by burst. A burst: one untimed warm call (the last copy: wakes the thread pool, loads
    the copy a cached burst reuses), then ``burst`` calls rounded up to whole rounds over the
    mode's functions; ``after`` (untimed) follows each burst."""
    samples: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(repeats):
        for mode, fns in modes.items():
            n = max(1, math.ceil(burst / len(fns))) * len(fns)
            fns[-1]()
            t0 = time.perf_counter()
            for i in range(n):
                fns[i % len(fns)]()
            samples[mode].append((time.perf_counter() - t0) / n)
            if after is not None:
                after()
    return {mode: float(np.median(v)) for mode, v in samples.items()}


class LutRunner:
    """``copies`` Sessions of one LUT artifact; modes Session / bare VM, cached / rotated."""

    after = None

    def __init__(self, spec: dict[str, Any]) -> None:
        import edgert

        self.sessions = [edgert.Session(spec["artifact"], threads=spec["threads"])
                         for _ in range(spec["copies"])]

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.sessions[0].run(None, {"x": x})[0]

    def modes(self, x: np.ndarray) -> dict[str, list[Callable[[], Any]]]:
        import tvm

        x_tvm = tvm.runtime.tensor(x)
        vms = [s._backend._main for s in self.sessions]          # noqa: SLF001 - the bare VM
        run = [lambda s=s: s.run(None, {"x": x}) for s in self.sessions]
        bare = [lambda f=f: f(x_tvm) for f in vms]
        return {"session/cached": run[:1], "vm/cached": bare[:1],
                "session/rotated": run, "vm/rotated": bare}

    def kernels(self, x: np.ndarray) -> list[tuple[str, float]]:
        """The kernels of one cached call: (name, ms), slowest first."""
        return [(t.name, t.ms) for t in self.sessions[0].kernel_times({"x": x}, repeats=20)]


class OrtRunner:
    """``copies`` onnxruntime sessions of one model file; modes cached / rotated."""

    after = None

    def __init__(self, spec: dict[str, Any]) -> None:
        from edgert.peers import onnxruntime_session

        self.sessions = [onnxruntime_session(spec["model"], spec["threads"])
                         for _ in range(spec["copies"])]

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.sessions[0].run(None, {"x": x})[0]

    def modes(self, x: np.ndarray) -> dict[str, list[Callable[[], Any]]]:
        run = [lambda s=s: s.run(None, {"x": x}) for s in self.sessions]
        return {"cached": run[:1], "rotated": run}


class GgmlRunner:
    """ggml's kernel ``qtype`` on copies of the weight, built per row count (ggml graphs are
    built for M rows); modes cached / rotated; the pool is paused after each burst."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec, self.w = spec, np.load(spec["weight"])
        self.built: dict[int, list[Any]] = {}
        self.after: Callable[[], None] | None = None

    def _copies(self, m: int) -> list[Any]:
        from edgert.peers import GgmlMatMul

        if m not in self.built:
            spec = self.spec
            first = GgmlMatMul(self.w, spec["qtype"], m, spec["threads"])
            n = copies_for(first.weight_bytes, spec["rotate_mb"], spec["max_copies"])
            self.built[m] = [first] + [GgmlMatMul(self.w, spec["qtype"], m, spec["threads"])
                                       for _ in range(n - 1)]
        self.after = self.built[m][0].pause
        return self.built[m]

    def run(self, x: np.ndarray) -> np.ndarray:
        return self._copies(len(x))[0].run(x)

    def modes(self, x: np.ndarray) -> dict[str, list[Callable[[], Any]]]:
        run = [lambda g=g: g.run(x) for g in self._copies(len(x))]
        return {"cached": run[:1], "rotated": run}

    def weight_bytes(self, m: int) -> tuple[int, int]:
        copies = self._copies(m)
        return copies[0].weight_bytes, len(copies)


RUNNERS = {"lut": LutRunner, "ort": OrtRunner, "ggml": GgmlRunner}


def runtime_worker(conn: Any, kind: str, spec: dict[str, Any]) -> None:
    """Serve one candidate in this process (:func:`processes.serve`). Requests: ``("run", x)``
    -> y; ``("time", (xs, burst, repeats))`` -> ``{m: {mode: seconds per call}}``;
    ``("kernels", x)`` (LUT) -> ``[(kernel, ms)]``; ``("ggml_bytes", m)`` -> (weight bytes,
    copies); ``("stop", None)``."""
    os.environ["EDGERT_THREAD_POLICY"] = spec.get("policy", "tvm")   # before edgert's import

    def handle(runner: Any, cmd: str, arg: Any) -> Any:
        if cmd == "run":
            return runner.run(arg)
        if cmd == "time":
            xs, burst, repeats = arg
            return {len(x): time_modes(runner.modes(x), burst, repeats, runner.after)
                    for x in xs}
        if cmd == "kernels":
            return runner.kernels(arg)
        if cmd == "ggml_bytes":
            return runner.weight_bytes(arg)
        raise ValueError(f"unknown request {cmd!r}")

    serve(conn, lambda: RUNNERS[kind](spec), handle)


# ---------------------------------------------------------------- one shape

def build_candidates(k: int, n: int, threads: int, args: argparse.Namespace, tmp: Path,
                     fp_path: Path, nb_path: Path) -> dict[str, tuple[str, dict[str, Any]]]:
    """Compile the LUT artifacts of one (shape, threads); every candidate as (kind, spec)."""
    from edgert.compiler import compile_model

    common = {"threads": threads, "policy": args.policy}
    cands: dict[str, tuple[str, dict[str, Any]]] = {}
    built = []
    for label, (bits, kern) in variants(args).items():
        out = tmp / f"lut_{k}x{n}_{label}_t{threads}.edgert"
        t0 = time.perf_counter()
        c0 = time.process_time()
        compile_model(fp_path, out, weight_bits=bits, group_size=group_size(k), threads=threads,
                      lut="always" if kern == "lut" else "never", cache=False)
        built.append(f"{label}: {time.perf_counter() - t0:.1f} s "
                     f"(cpu {time.process_time() - c0:.1f} s)")
        copies = copies_for(lut_bytes(k, n, bits, kern), args.rotate_mb, args.max_copies)
        cands[f"lut{label}"] = ("lut", {**common, "artifact": str(out), "copies": copies,
                                        "bits": bits, "kernel": kern, "label": label})
    print(f"  {k}x{n} t={threads}: built " + ", ".join(built), flush=True)
    if args.before_artifacts:
        for label, (bits, kern) in variants(args).items():
            before = args.before_artifacts / f"lut_{k}x{n}_{label}_t{threads}.edgert"
            if not before.exists():
                print(f"  {before.name}: no earlier build in {args.before_artifacts}", flush=True)
                continue
            spec = dict(cands[f"lut{label}"][1], artifact=str(before), label=f"{label}-before")
            cands[f"lut{label}-before"] = ("lut", spec)
    if args.build_only:
        return cands
    cands["ort-nbits4"] = ("ort", {**common, "model": str(nb_path), "copies": copies_for(
        nbits_bytes(k, n), args.rotate_mb, args.max_copies)})
    cands["ort-fp32"] = ("ort", {**common, "model": str(fp_path), "copies": copies_for(
        4 * k * n, args.rotate_mb, args.max_copies)})
    for qt in (GGML_KERNELS if args.ggml else ()):
        cands[f"ggml-{qt}"] = ("ggml", {**common, "weight": str(tmp / f"w_{k}x{n}.npy"),
                                        "qtype": qt, "rotate_mb": args.rotate_mb,
                                        "max_copies": args.max_copies})
    return cands


def time_rounds(workers: dict[str, Worker], xs: list[np.ndarray], threads: int,
                args: argparse.Namespace) -> tuple[dict[str, list[dict]], list[float], list[str]]:
    """Per candidate, one ``{m: {mode: s}}`` per round; the read bandwidth (bytes/s) and the
    load average of each round."""
    per_round: dict[str, list[dict]] = {name: [] for name in workers}
    bandwidth, loads = [], []
    for k in range(args.rounds):
        order = list(workers) if k % 2 == 0 else list(workers)[::-1]
        loads.append(load_avg())
        t0 = time.perf_counter()
        for name in order:
            per_round[name].append(workers[name].call("time", (xs, args.burst, args.repeats)))
            time.sleep(args.settle)
        bandwidth.append(read_bandwidth(threads, tries=2))
        print(f"    round {k + 1}/{args.rounds}: {time.perf_counter() - t0:.1f} s, read "
              f"{bandwidth[-1] / 1e9:.1f} GB/s, load {loads[-1]}", flush=True)
    return per_round, bandwidth, loads


def stats(values: list[float]) -> dict[str, float]:
    """Median, min and max of per-round values."""
    return {"median": float(np.median(values)), "min": float(min(values)),
            "max": float(max(values))}


def bench_shape(k: int, n: int, args: argparse.Namespace, tmp: Path,
                rng: np.random.Generator) -> list[dict]:
    """Time every candidate of one shape (``--build-only``: compile the LUT artifacts into
    that folder and return no rows)."""
    w = (rng.standard_normal((k, n)) * 0.02).astype(np.float32)
    np.save(tmp / f"w_{k}x{n}.npy", w)
    fp_path, nb_path = tmp / f"mm_{k}x{n}.onnx", tmp / f"mm_{k}x{n}_nbits.onnx"
    fp_path.write_bytes(shape_model(k, n, w).SerializeToString())
    t0 = time.perf_counter()
    with contextlib.chdir(tmp):
        nbits_model(fp_path, nb_path, group_size(k))
    print(f"  {k}x{n}: MatMulNBits quantization {time.perf_counter() - t0:.1f} s", flush=True)
    xs = [rng.standard_normal((m, k)).astype(np.float32) for m in args.m]
    rows = []
    for threads in args.threads:
        cands = build_candidates(k, n, threads, args, args.build_only or tmp, fp_path, nb_path)
        if args.build_only:
            continue
        workers: dict[str, Worker] = {}
        try:
            for name, (kind, spec) in cands.items():
                try:
                    workers[name] = Worker(runtime_worker, kind, spec)
                except RuntimeError as e:
                    print(f"  {name}: not run: {e}", flush=True)
            errors = {name: [rel_err(wk.call("run", x), x @ w) for x in xs]
                      for name, wk in workers.items()}
            extra = {name: [wk.call("ggml_bytes", len(x)) for x in xs]
                     for name, wk in workers.items() if cands[name][0] == "ggml"}
            per_round, bandwidth, loads = time_rounds(workers, xs, threads, args)
            kernels = {name: [wk.call("kernels", x) for x in xs]
                       for name, wk in workers.items() if cands[name][0] == "lut"}
        finally:
            for wk in workers.values():
                wk.close()
        for i, x in enumerate(xs):
            m = len(x)
            rows += cell_rows(k, n, m, i, threads, cands, per_round, bandwidth, loads, errors,
                              extra, kernels)
    return rows


def cell_rows(k: int, n: int, m: int, i: int, threads: int, cands: dict, per_round: dict,
              bandwidth: list[float], loads: list[str], errors: dict, extra: dict,
              kernels: dict) -> list[dict]:
    """The result rows of one (shape, M, threads): one per LUT candidate, with its peers."""
    def times(name: str, mode: str) -> np.ndarray:
        return np.array([r[m][mode] for r in per_round[name]]) * 1e3          # ms per round

    bw = np.array(bandwidth)
    peers = {name: {v: times(name, v) for v in ("cached", "rotated")}
             for name, (kind, _) in cands.items() if kind != "lut" and name in per_round}
    rows = []
    for name, (kind, spec) in cands.items():
        if kind != "lut" or name not in per_round:
            continue
        t = {f"{api}_{v}": times(name, f"{api}/{v}")
             for api in ("session", "vm") for v in ("cached", "rotated")}
        nbytes = lut_bytes(k, n, spec["bits"], spec["kernel"])
        roof = nbytes / bw * 1e3                                           # ms per round
        row = {"K": k, "N": n, "M": m, "threads": threads, "bits": spec["label"],
               "kernel": spec["kernel"], "weight_bytes": nbytes, "group_size": group_size(k),
               "copies": spec["copies"], "rounds": len(bw),
               **{f"{key}_ms": stats(list(v)) for key, v in t.items()},
               "roofline_ms": stats(list(roof)), "bandwidth_gbs": stats(list(bw / 1e9)),
               "pct_roofline_session": stats(list(100 * roof / t["session_rotated"])),
               "pct_roofline_vm": stats(list(100 * roof / t["vm_rotated"])),
               "rel_err_vs_fp32": errors[name][i],
               "kernels_cached_ms": kernels.get(name, [[]] * (i + 1))[i][:3],
               "loadavg": loads}
        after = name.removesuffix("-before")
        if after != name and after in per_round:
            # this build's time over the earlier build's, within each round (< 1: faster now)
            for key in ("session_rotated", "vm_rotated", "session_cached", "vm_cached"):
                api, _, mode = key.partition("_")
                row[f"now_over_before_{key}"] = stats(list(times(after, f"{api}/{mode}")
                                                           / t[key]))
        for peer, pt in peers.items():
            key = peer.replace("-", "_")
            row[f"{key}_rotated_ms"] = stats(list(pt["rotated"]))
            row[f"{key}_cached_ms"] = stats(list(pt["cached"]))
            row[f"{key}_rel_err_vs_fp32"] = errors[peer][i]
            row[f"vs_{key}_rotated"] = stats(list(pt["rotated"] / t["session_rotated"]))
            row[f"vs_{key}_cached"] = stats(list(pt["cached"] / t["session_cached"]))
            if peer == "ort-nbits4":
                nb_roof = nbits_bytes(k, n) / bw * 1e3
                row["ort_nbits4_pct_roofline"] = stats(list(100 * nb_roof / pt["rotated"]))
            if peer in extra:
                gbytes, gcopies = extra[peer][i]
                row[f"{key}_bytes"], row[f"{key}_copies"] = gbytes, gcopies
                row[f"{key}_pct_roofline"] = stats(list(100 * gbytes / bw * 1e3 / pt["rotated"]))
        rows.append(row)
    return rows


# ---------------------------------------------------------------- output

def _med(r: dict, key: str, fmt: str = ".3f") -> str:
    return f"{r[key]['median']:{fmt}}" if key in r else "-"


def _ratio(r: dict, key: str) -> str:
    if key not in r:
        return "-"
    s = r[key]
    return f"{s['median']:.2f} [{s['min']:.2f}-{s['max']:.2f}]"


def print_table(rows: list[dict]) -> None:
    cols = [("KxN", 11), ("M", 3), ("thr", 4), ("bits", 8), ("lut rot", 9), ("vm rot", 8),
            ("lut $", 8), ("vm $", 8), ("nb4 rot", 9), ("nb4 $", 8), ("fp32 rot", 9),
            ("GB/s", 6), ("%roof", 6), ("%roofvm", 8), ("x nb4 rot", 19), ("x nb4 $", 8),
            ("x fp32", 7), ("t/t4", 6), ("err", 6), ("q4_0 rot", 9), ("tq2 rot", 8),
            ("x q4_0", 7), ("x tq2", 6)]
    print("".join(f"{name:>{w}}" for name, w in cols))
    t4 = {(r["K"], r["N"], r["M"], r["threads"]): r["vm_rotated_ms"]["median"]
          for r in rows if r["bits"] == "4"}
    for r in rows:
        key = (r["K"], r["N"], r["M"], r["threads"])
        lin = r["vm_rotated_ms"]["median"] / t4[key] if key in t4 else float("nan")
        vals = [f"{r['K']}x{r['N']}", r["M"], r["threads"], r["bits"],
                _med(r, "session_rotated_ms"), _med(r, "vm_rotated_ms"),
                _med(r, "session_cached_ms"), _med(r, "vm_cached_ms"),
                _med(r, "ort_nbits4_rotated_ms"), _med(r, "ort_nbits4_cached_ms"),
                _med(r, "ort_fp32_rotated_ms"), _med(r, "bandwidth_gbs", ".1f"),
                _med(r, "pct_roofline_session", ".0f") + "%",
                _med(r, "pct_roofline_vm", ".0f") + "%",
                _ratio(r, "vs_ort_nbits4_rotated"), _med(r, "vs_ort_nbits4_cached", ".2f"),
                _med(r, "vs_ort_fp32_rotated", ".2f"), f"{lin:.2f}", f"{r['rel_err_vs_fp32']:.3f}",
                _med(r, "ggml_q4_0_rotated_ms"), _med(r, "ggml_tq2_0_rotated_ms"),
                _med(r, "vs_ggml_q4_0_rotated", ".2f"), _med(r, "vs_ggml_tq2_0_rotated", ".2f")]
        print("".join(f"{v:>{w}}" for v, (_, w) in zip(vals, cols)))
    print("times: ms per call, the median over rounds of each round's median. rot = rotated "
          "over copies (DRAM), $ = one copy (cached); lut = edgert Session.run, vm = the VM's "
          "main called directly; nb4 = ORT MatMulNBits 4-bit; GB/s = the read bandwidth probe; "
          "%roof = LUT weight bytes / bandwidth / rotated time (Session, VM); x nb4 / x fp32 = "
          "ORT time / edgert Session time within a round (> 1: edgert faster), median [min-max] "
          "over rounds; t/t4 = vm rotated time / 4-bit LUT's; err = relative error vs fp32 "
          "x @ W; bits '4dq' = the dequantize kernel on the same 4-bit weights; q4_0 / tq2 = "
          "ggml's Q4_0 and TQ2_0 kernels (rotated), x q4_0 / x tq2 = their time / edgert's")
    for r in rows:
        if "now_over_before_session_rotated" in r:
            print(f"  {r['K']}x{r['N']} M={r['M']} t={r['threads']} bits {r['bits']}: this "
                  "build's time / the earlier build's, per round, median [min-max]: "
                  + ", ".join(f"{key} {_ratio(r, 'now_over_before_' + key)}" for key in (
                      "session_rotated", "vm_rotated", "session_cached", "vm_cached")))
    print("kernels of one cached LUT call (edgert Session.kernel_times, ms):")
    for r in rows:
        ks = ", ".join(f"{name} {ms:.3f}" for name, ms in r["kernels_cached_ms"])
        print(f"  {r['K']}x{r['N']} M={r['M']} t={r['threads']} {r['bits']}: {ks}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4096x4096 only")
    parser.add_argument("--shapes", nargs="+", help="K x N, e.g. 4096x11008 (default: all six)")
    parser.add_argument("--bits", nargs="+", default=BITS, choices=BITS)
    parser.add_argument("--kernels", nargs="+", default=["lut", "dequant"],
                        choices=["lut", "dequant"], help="table lookup and/or dequantize")
    parser.add_argument("--m", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5, help="rounds over the processes")
    parser.add_argument("--repeats", type=int, default=5, help="bursts per mode and round")
    parser.add_argument("--burst", type=int, default=8, help="calls per timed burst")
    parser.add_argument("--settle", type=float, default=0.3,
                        help="seconds between two processes' turns (TVM's pool stops spinning)")
    parser.add_argument("--policy", default="tvm", choices=["tvm", "unbound", "nospin",
                                                            "adaptive"],
                        help="EDGERT_THREAD_POLICY of the LUT processes")
    parser.add_argument("--no-ggml", action="store_true", help="leave ggml's kernels out")
    parser.add_argument("--rotate-mb", type=float, default=64,
                        help="weight bytes the rotated copies hold together, at least")
    parser.add_argument("--max-copies", type=int, default=64)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--build-only", type=Path, metavar="DIR",
                        help="compile the LUT artifacts into DIR and stop (run it with an "
                             "earlier edgert to make --before-artifacts)")
    parser.add_argument("--before-artifacts", type=Path, metavar="DIR",
                        help="also time the artifacts an earlier build left in DIR "
                             "(--build-only) as '<bits>-before' rows, in the same rounds")
    args = parser.parse_args(argv)
    shapes = ([(4096, 4096)] if args.quick else
              [parse_shape(s) for s in args.shapes] if args.shapes else ALL_SHAPES)

    from edgert.peers import libggml_dir

    try:
        args.ggml = not args.no_ggml
        ggml_note = (f"ggml: {libggml_dir()[1]}, kernels " + ", ".join(GGML_KERNELS)
                     if args.ggml else "ggml left out (--no-ggml)")
    except ImportError as e:
        args.ggml, ggml_note = False, f"ggml not run: {e}"
    print(ggml_note)
    t_start = time.perf_counter()
    now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    avx = "AVX-512BW" if has_flag("avx512bw") else "AVX2" if has_flag("avx2") else "no AVX2"
    print(f"{cpu_name()} ({avx}), {os.cpu_count()} CPUs, {now}, load at start {load_avg()}",
          flush=True)
    rng = np.random.default_rng(0)
    rows: list[dict] = []
    if args.build_only:
        args.build_only.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-lut-") as tmp_dir:
        for k, n in shapes:
            rows += bench_shape(k, n, args, Path(tmp_dir), rng)
    if args.build_only:
        print(f"artifacts in {args.build_only}")
        return 0
    print()
    print_table(rows)
    import onnxruntime

    result = {"benchmark": "LutMatMul (float32 activations) vs onnxruntime and ggml, ms per call,"
                           " one process per candidate, alternating rounds",
              "machine": {"cpu": cpu_name(), "cpus": os.cpu_count(), "avx2": has_flag("avx2"),
                          "avx512bw": has_flag("avx512bw"), "loadavg_end": load_avg()},
              "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
              "onnxruntime": onnxruntime.__version__, "group_size": GROUP_SIZE,
              "ggml": ggml_note, "rotate_mb": args.rotate_mb, "burst": args.burst,
              "repeats": args.repeats, "rounds": args.rounds, "policy": args.policy,
              "wall_s": time.perf_counter() - t_start, "rows": rows}
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
