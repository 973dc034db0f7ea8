"""CUDA artifacts on an NVIDIA GPU: integer graphs bit-identical to the CPU, fp32 within tolerance,
accuracy on the digits test set, latency against PyTorch on the same GPU.

    python benchmarks/bench_cuda.py prepare DIR [--target cuda-sm90] [--python 3.12]
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
- ``vit_torch.npz``: the float model's parameters under PyTorch names (for the peer), checked
  here against onnxruntime;
- ``site/``: a runtime-only Python environment for ``--python``: apache-tvm without its
  compiler library (``TVM_USE_RUNTIME_LIB=1``), apache-tvm-ffi's wheel for that Python, and
  edgert itself (the machine must have numpy, onnx, onnxruntime, numba, typer and torch).

``run`` (``PYTHONPATH=DIR/site``) loads each CUDA artifact with ``edgert.Session`` and checks it
against ``expected.npz``: integer variants bit for bit, float variants within
``FLOAT_TOL`` of the largest logit; it then times batch 1 and batch 256 (median of repeated calls, numpy in and
out: host-device copies included) for each variant and for PyTorch eager float32 on the GPU
(also numpy in and out). Prints a table and one JSON line.
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
TVM_SKIP = ("tvm/lib/libtvm_compiler.so", "tvm/3rdparty/", "tvm/src/", "tvm/include/")
FFI_SKIP = ("tvm_ffi/3rdparty/", "tvm_ffi/include/")


# ---------------------------------------------------------------------------------------------
# prepare (here, with the compiler)

def prepare(out: Path, target: str, python: str) -> None:
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
    np.savez(out / "expected.npz", **expected)
    np.savez(out / "vit_torch.npz", **torch_parameters(onnx.load(DATA / "vit_digits.onnx")))
    pack_runtime(out / "site", python)


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
    """A runtime-only environment for ``python``: this machine's apache-tvm package without the
    compiler (it is pure Python plus Python-independent libraries), apache-tvm-ffi's wheel for
    that Python, and edgert's own wheel, unpacked into ``site``."""
    from importlib import metadata

    import tvm

    if site.exists():
        shutil.rmtree(site)
    shutil.copytree(Path(tvm.__file__).parent, site / "tvm",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for skip in TVM_SKIP:
        path = site / skip
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    with tempfile.TemporaryDirectory(prefix="bench-cuda-wheels-") as tmp:
        ffi = f"apache-tvm-ffi=={metadata.version('apache-tvm-ffi')}"
        plat = [a for n in (17, 24, 27, 28) for a in ("--platform", f"manylinux_2_{n}_x86_64")]
        _pip("download", "--no-deps", "--only-binary=:all:", "--python-version", python,
             "--implementation", "cp", *plat, "-d", tmp, ffi)
        _pip("wheel", "--no-deps", "--no-build-isolation", "-w", tmp, str(ROOT))
        for whl in Path(tmp).glob("*.whl"):
            with zipfile.ZipFile(whl) as z:
                z.extractall(site, [m for m in z.namelist() if not m.startswith(FFI_SKIP)])
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
    return result


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("step", choices=("prepare", "run", "all"))
    p.add_argument("dir", type=Path)
    p.add_argument("--target", default="cuda-sm90", help="CUDA target to compile for")
    p.add_argument("--python", default=f"{sys.version_info.major}.{sys.version_info.minor}",
                   help="Python version of the GPU machine (for the runtime environment)")
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.step in ("prepare", "all"):
        prepare(args.dir, args.target, args.python)
    if args.step in ("run", "all"):
        result = run(args.dir, args.repeats)
        report(result)
        emit(result, args.json)
        bad = [n for n, r in result["variants"].items()
               if not r.get("bit_identical", r.get("within_tol"))]
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
