"""Depthwise float32 convolutions (``compiler/schedule_depthwise.py``): they leave TVM's default
conv2d for their own kernel, and compiled models match onnxruntime over strides, padding,
dilation, a channel multiplier and a symbolic batch; integer depthwise convolutions keep the
default build."""

from __future__ import annotations

import numpy as np

# (C, O, kernel, strides, pads (top, left, bottom, right), dilations)
GEOMETRIES = [
    (8, 8, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),      # MobileNet 3x3
    (6, 6, (5, 5), (2, 2), (2, 2, 2, 2), (1, 1)),      # MobileNetV3 5x5 stride 2
    (4, 8, (3, 2), (2, 1), (0, 1, 2, 0), (2, 1)),      # multiplier 2, ragged, dilated
]
H, W = 11, 9


def _model(integer: bool = False):
    """One input ``x`` [n, 8, H, W] feeding one depthwise Conv per geometry (on its first C
    channels, through a Slice)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, outputs, inits = [], [], []
    xt = TensorProto.INT8 if integer else TensorProto.FLOAT
    for k, (c, o, kernel, strides, pads, dilations) in enumerate(GEOMETRIES):
        weight = (rng.integers(-8, 8, (o, 1, *kernel)).astype(np.int8) if integer
                  else rng.standard_normal((o, 1, *kernel)).astype(np.float32))
        inits += [numpy_helper.from_array(weight, f"w{k}"),
                  numpy_helper.from_array(np.array([0], np.int64), f"start{k}"),
                  numpy_helper.from_array(np.array([c], np.int64), f"end{k}"),
                  numpy_helper.from_array(np.array([1], np.int64), f"axis{k}")]
        nodes.append(helper.make_node("Slice", ["x", f"start{k}", f"end{k}", f"axis{k}"],
                                      [f"x{k}"]))
        op = "ConvInteger" if integer else "Conv"
        nodes.append(helper.make_node(op, [f"x{k}", f"w{k}"], [f"y{k}"], group=c,
                                      strides=list(strides), pads=list(pads),
                                      dilations=list(dilations)))
        outputs.append(helper.make_tensor_value_info(
            f"y{k}", TensorProto.INT32 if integer else TensorProto.FLOAT, ["n", o, None, None]))
    graph = helper.make_graph(nodes, "depthwise",
                              [helper.make_tensor_value_info("x", xt, ["n", 8, H, W])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def test_depthwise_convolutions_get_their_kernel_and_match_onnxruntime(tmp_path):
    import onnx
    import onnxruntime as ort
    import tvm

    import edgert
    from edgert.compiler import compile_model, lower
    from edgert.targets import TARGETS

    model = _model()
    target = TARGETS["x86-avx2"]
    tvm_target = tvm.target.Target(target.tvm_target_dict(num_cores=2))
    scheduled = lower._schedule_for_cpu(lower.to_relax(model), target, tvm_target)
    names = [gv.name_hint for gv, _ in scheduled.functions_items()]
    # the 8-channel one as schedule_nhwc's NHWC kernel, the others as the NCHW one
    assert sum(n.startswith(("depthwise", "nhwc_depthwise")) for n in names) \
        == len(GEOMETRIES), names
    assert sum(n.startswith("nhwc_depthwise") for n in names) == 1, names
    assert "R.nn.conv2d(" not in scheduled.script()

    onnx.save(model, tmp_path / "dw.onnx")
    sess = edgert.Session(compile_model(tmp_path / "dw.onnx", tmp_path / "dw.edgert"))
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 8, H, W)).astype(np.float32)
        for got, want in zip(sess.run(None, {"x": x}), ref.run(None, {"x": x})):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_integer_depthwise_convolutions_keep_the_default_build():
    from edgert.compiler.lower import to_relax
    from edgert.compiler.schedule_depthwise import depthwise_convs

    mod = to_relax(_model(integer=True))
    assert depthwise_convs(mod) is mod
