"""Per-call overhead of ``Session.run``: Python-side cost on top of the compiled model.

    python benchmarks/bench_overhead.py [--repeats 2000] [--json out.json]

On a model whose kernels take a few microseconds (a 3-layer MLP, batch 1, one thread) the
whole call is overhead. Timed interleaved in one process:

- ``vm-prebuilt``: the Relax VM's ``main`` on TVM tensors made once (the floor: VM dispatch
  and kernel time only);
- ``vm+copies``: the same plus converting the numpy input and output each call (what a thin
  wrapper must do);
- ``edgert``: ``Session.run`` (validation, thread setup, conversions);
- ``onnxruntime``: ``InferenceSession.run`` on the same ONNX model, the peer.

Reported: median microseconds per call and ``edgert - vm-prebuilt`` = edgert's own overhead.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from common import emit


def mlp_onnx(path: Path) -> Path:
    """A 3-layer fp32 MLP (20 -> 64 -> 64 -> 5), batch symbolic, built with onnx.helper."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    dims = [20, 64, 64, 5]
    nodes, inits, prev = [], [], "x"
    for i, (k, n) in enumerate(zip(dims, dims[1:])):
        inits += [numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), f"b{i}")]
        out = "y" if i == len(dims) - 2 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [out + ("" if out == "y" else "_pre")]))
        if out != "y":
            nodes.append(helper.make_node("Relu", [out + "_pre"], [out]))
        prev = out
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 20])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    import tvm

    import edgert
    from edgert.compiler import compile_model
    from edgert.peers import onnxruntime_session
    from edgert.timing import interleaved_latencies, summarize

    with tempfile.TemporaryDirectory() as tmp:
        path = mlp_onnx(Path(tmp) / "mlp.onnx")
        sess = edgert.Session(compile_model(path, Path(tmp) / "mlp.edgert", threads=1), threads=1)
        ort = onnxruntime_session(path, 1)
        x = np.random.default_rng(1).standard_normal((1, 20)).astype(np.float32)
        feed = {"x": x}
        backend = sess._backend                      # the VM the session drives
        backend._configure_threads()
        main_fn, dev = backend._main, backend.device
        x_tvm = tvm.runtime.tensor(x, dev)

        def vm_copies() -> np.ndarray:
            return main_fn(tvm.runtime.tensor(x, dev)).numpy()

        np.testing.assert_array_equal(sess.run(None, feed)[0], vm_copies())
        lat = interleaved_latencies({"vm-prebuilt": lambda: main_fn(x_tvm), "vm+copies": vm_copies,
                                     "edgert": lambda: sess.run(None, feed),
                                     "onnxruntime": lambda: ort.run(None, feed)},
                                    repeats=args.repeats, warmup=50)
    us = {name: summarize(v)["p50_ms"] * 1e3 for name, v in lat.items()}
    print(f"{'call':<14}{'p50 us':>9}")
    for name, v in us.items():
        print(f"{name:<14}{v:>9.1f}")
    print(f"edgert overhead over the VM call: {us['edgert'] - us['vm-prebuilt']:.1f} us; "
          f"edgert / onnxruntime: {us['edgert'] / us['onnxruntime']:.2f}x")
    result = {"benchmark": "Session.run overhead, 3-layer MLP, batch 1, 1 thread", "p50_us": us,
              "edgert_overhead_us": us["edgert"] - us["vm-prebuilt"]}
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
