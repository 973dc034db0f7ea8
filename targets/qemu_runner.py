"""Run one compiled edgert library on TVM's Relax VM, tensors in and out through ``.npz`` files.

This file is executed as a script by the aarch64 Python that :mod:`edgert.targets.qemu` runs
under ``qemu-aarch64``; it is not imported by edgert. It needs only numpy and the TVM runtime,
imported with ``TVM_USE_RUNTIME_LIB=1`` (the cached environment has no ``libtvm_compiler.so``
at all, so TVM falls back to runtime-only mode either way). It must not import edgert (whose
dependencies — onnx, numba... — are not in that environment).

Usage::

    python qemu_runner.py LIB IN.npz OUT.npz [THREADS]
    python qemu_runner.py --selftest

``IN.npz`` holds the inputs in the model's order as ``in0``, ``in1``...; ``OUT.npz`` gets the
outputs as ``out0``, ``out1``... and ``seconds`` (load and run times, float64 ``[load, run]``).
``--selftest`` imports everything a run needs and round-trips an ``.npz`` (the setup runs it
once so that the ``.pyc`` files of those modules are written into the cache).
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")

import numpy as np  # noqa: E402


def _import_tvm():
    import tvm
    from tvm.runtime.vm import VirtualMachine

    return tvm, VirtualMachine


def _to_numpy(result) -> list:
    if hasattr(result, "numpy"):
        return [result.numpy()]
    out = []
    for r in result:  # a tuple of outputs comes back as an ffi Array
        out.extend(_to_numpy(r))
    return out


def run(lib_path: str, in_path: str, out_path: str, threads: int = 1) -> None:
    start = time.perf_counter()
    tvm, VirtualMachine = _import_tvm()
    dev = tvm.cpu(0)
    tvm.get_global_func("runtime.config_threadpool")(1, int(threads))
    vm = VirtualMachine(tvm.runtime.load_module(lib_path), dev)
    with np.load(in_path) as data:
        inputs = [np.ascontiguousarray(data[f"in{i}"]) for i in range(len(data.files))]
    loaded = time.perf_counter()
    outputs = _to_numpy(vm["main"](*[tvm.runtime.tensor(a, dev) for a in inputs]))
    done = time.perf_counter()
    arrays = {f"out{i}": a for i, a in enumerate(outputs)}
    np.savez(out_path, seconds=np.array([loaded - start, done - loaded]), **arrays)


def selftest() -> None:
    import io

    tvm, _ = _import_tvm()
    buf = io.BytesIO()
    np.savez(buf, in0=np.arange(4, dtype=np.int8))
    buf.seek(0)
    with np.load(buf) as data:
        assert data["in0"].tolist() == [0, 1, 2, 3]
    t = tvm.runtime.tensor(np.arange(3, dtype=np.float32), tvm.cpu(0))
    assert t.numpy().tolist() == [0.0, 1.0, 2.0]
    print(f"ok {sys.version.split()[0]} numpy {np.__version__} tvm {tvm.__version__}")


def main(argv: list[str]) -> int:
    if argv == ["--selftest"]:
        selftest()
        return 0
    if len(argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    run(*argv[:3], threads=int(argv[3]) if len(argv) == 4 else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
