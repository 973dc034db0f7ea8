"""Float32 sigmoid on the polynomial exp (``compiler/schedule_sigmoid.py``): the kernel against
float64 over the whole float32 range that matters, and a compiled Sigmoid + SiLU model against
float64 (relative) and onnxruntime (absolute: its sigmoid is an approximation)."""

from __future__ import annotations

import numpy as np

from edgert.compiler.schedule_sigmoid import sigmoid_te
from ophelpers import run_te

MAX_REL_ERR = 3e-7      # measured 1.8e-7 over [-87, 88]


def test_sigmoid_kernel_against_float64():
    x = np.concatenate([np.linspace(-87, 88, 20001), [-1e4, -100, -88.5, 87.5, 100, 1e4, 0.0]])
    x = x.astype(np.float32)
    got = run_te(sigmoid_te, [x]).astype(np.float64)
    with np.errstate(over="ignore"):                 # exp(1e4): inf, want 0
        want = 1 / (1 + np.exp(-x.astype(np.float64)))
    inside = np.abs(x) < 87
    rel = np.abs(got - want)[inside] / want[inside]
    assert rel.max() <= MAX_REL_ERR, rel.max()
    assert np.all(np.abs(got - want)[~inside] <= 1e-38 + 1e-7 * want[~inside])
    assert np.all((got >= 0) & (got <= 1))


def test_compiled_sigmoid_and_silu_match_onnxruntime(tmp_path):
    import onnx
    import onnxruntime as ort
    import tvm
    from onnx import TensorProto, helper

    import edgert
    from edgert.compiler import compile_model, lower
    from edgert.targets import TARGETS

    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])]
    graph = helper.make_graph(nodes, "silu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 33])],
                              [helper.make_tensor_value_info("s", TensorProto.FLOAT, [2, 8, 33]),
                               helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8, 33])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    target = TARGETS["x86-avx2"]
    scheduled = lower._schedule_for_cpu(lower.to_relax(model), target, tvm.target.Target(
        target.tvm_target_dict(num_cores=2)))
    assert "sigmoid_te" in [gv.name_hint for gv, _ in scheduled.functions_items()]
    onnx.save(model, tmp_path / "silu.onnx")
    sess = edgert.Session(compile_model(tmp_path / "silu.onnx", tmp_path / "silu.edgert"))
    x = (np.random.default_rng(0).standard_normal((2, 8, 33)) * 8).astype(np.float32)
    sig, silu = sess.run(None, {"x": x})
    want = 1 / (1 + np.exp(-x.astype(np.float64)))
    np.testing.assert_allclose(sig, want, rtol=MAX_REL_ERR, atol=0)
    np.testing.assert_allclose(silu, x * want, rtol=MAX_REL_ERR + 1.2e-7, atol=0)
    # onnxruntime's own sigmoid is an approximation (absolute error ~1e-7; 0 for x < -16)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for got, theirs in zip((sig, silu), ref.run(None, {"x": x})):
        np.testing.assert_allclose(got, theirs, rtol=0, atol=1e-6 * np.abs(theirs).max())
