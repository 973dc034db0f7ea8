"""Convolutions: edgert's im2col + matmul kernels vs TVM's default build vs onnxruntime.

    python benchmarks/bench_conv.py [--threads 2] [--repeats 50] [--layers NAME ...]
                                    [--json out.json]

One-Conv models at batch 1 (typical CNN / ViT layers, regnet_x_400mf's grouped 3x3 layers),
float32 ``Conv`` and int8 ``ConvInteger`` (int8 data and weight, int32 out; float32 only for
the grouped layers). For each, timed interleaved in one process: edgert as it compiles now
(``compiler/schedule_conv.py``, ``compiler/schedule_grouped.py``), edgert without those
rewrites (``default``: TVM's conv2d loop nest, the "before"), and onnxruntime's float32 Conv
(the int8 rows too: onnxruntime's ConvInteger takes uint8 data only). Ratios edgert/ORT
(lower is better for edgert) are what to compare across runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from common import emit

# name: (C, O, H/W, kernel, stride, pad, groups)
LAYERS = {
    "resnet 3x3 64->64 @56": (64, 64, 56, 3, 1, 1, 1),
    "resnet 1x1 256->64 @56": (256, 64, 56, 1, 1, 0, 1),
    "stem 3x3 s2 3->32 @224": (3, 32, 224, 3, 2, 1, 1),
    "deit patchify 16x16 3->192 @224": (3, 192, 224, 16, 16, 0, 1),
    "regnet g2 3x3 s2 32->32 @112": (32, 32, 112, 3, 2, 1, 2),
    "regnet g4 3x3 64->64 @28": (64, 64, 28, 3, 1, 1, 4),
    "regnet g10 3x3 160->160 @14": (160, 160, 14, 3, 1, 1, 10),
    "regnet g25 3x3 400->400 @7": (400, 400, 7, 3, 1, 1, 25),
}


def conv_model(path: Path, layer: tuple, integer: bool) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    c, o, hw, k, s, p, g = layer
    rng = np.random.default_rng(0)
    w = (rng.integers(-128, 128, (o, c // g, k, k)).astype(np.int8) if integer
         else (rng.standard_normal((o, c // g, k, k)) / np.sqrt(c // g * k * k))
         .astype(np.float32))
    op, xt, yt = (("ConvInteger", TensorProto.INT8, TensorProto.INT32) if integer
                  else ("Conv", TensorProto.FLOAT, TensorProto.FLOAT))
    graph = helper.make_graph(
        [helper.make_node(op, ["x", "w"], ["y"], strides=[s, s], pads=[p] * 4, group=g)], "conv",
        [helper.make_tensor_value_info("x", xt, [1, c, hw, hw])],
        [helper.make_tensor_value_info("y", yt, [1, o, None, None])],
        [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def float_twin(path: Path, tmp: Path) -> Path:
    """The float32 Conv of an int8 ConvInteger model (onnxruntime's peer)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    node = model.graph.node[0]
    node.op_type = "Conv"
    w = numpy_helper.to_array(model.graph.initializer[0]).astype(np.float32)
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "w"))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    out = tmp / (path.stem + "_float.onnx")
    onnx.save(model, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--layers", nargs="+", default=list(LAYERS), choices=list(LAYERS))
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    import edgert
    from edgert.compiler import compile_model, schedule_conv, schedule_grouped
    from edgert.peers import onnxruntime_session
    from edgert.timing import interleaved_latencies, summarize

    rewrites = ((schedule_conv, "convs_as_matmuls"), (schedule_grouped, "grouped_convs"))
    ours = [getattr(m, f) for m, f in rewrites]
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name in args.layers:
            layer = LAYERS[name]
            for integer in (False, True) if layer[6] == 1 else (False,):
                label = f"{name} {'int8' if integer else 'fp32'}"
                path = conv_model(tmp / "conv.onnx", layer, integer)
                sessions = {}
                for variant in ("edgert", "default"):
                    for (module, fn), own in zip(rewrites, ours):
                        setattr(module, fn, own if variant == "edgert" else (lambda mod: mod))
                    art = compile_model(path, tmp / f"{variant}.edgert", threads=args.threads,
                                        cache=False)    # (the cache does not see the patch)
                    sessions[variant] = edgert.Session(art, threads=args.threads)
                for (module, fn), own in zip(rewrites, ours):
                    setattr(module, fn, own)
                ort = onnxruntime_session(float_twin(path, tmp) if integer else path,
                                          args.threads)
                c, _, hw = layer[:3]
                rng = np.random.default_rng(1)
                x = (rng.integers(-128, 128, (1, c, hw, hw)).astype(np.int8) if integer
                     else rng.standard_normal((1, c, hw, hw)).astype(np.float32))
                feed, ort_feed = {"x": x}, {"x": x.astype(np.float32)}
                outs = [s.run(None, feed)[0] for s in sessions.values()]
                np.testing.assert_allclose(outs[0], outs[1], rtol=1e-4, atol=1e-3)
                lat = interleaved_latencies(
                    {**{v: (lambda s=s: s.run(None, feed)) for v, s in sessions.items()},
                     "onnxruntime": lambda: ort.run(None, ort_feed)},
                    repeats=args.repeats, warmup=3)
                ms = {k: summarize(v)["p50_ms"] for k, v in lat.items()}
                rows.append({"layer": label, "threads": args.threads,
                             **{f"{k}_p50_ms": v for k, v in ms.items()},
                             "edgert_over_default": ms["edgert"] / ms["default"],
                             "edgert_over_ort_fp32": ms["edgert"] / ms["onnxruntime"]})
                print(f"{label:<38}{ms['default']:>9.3f} ms -> {ms['edgert']:>8.3f} ms "
                      f"(ORT fp32 {ms['onnxruntime']:.3f} ms): edgert/ORT "
                      f"{ms['edgert'] / ms['onnxruntime']:.2f}x", flush=True)
    emit({"benchmark": "convolutions, batch 1", "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
