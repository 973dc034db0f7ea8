"""Float32 transposed convolutions with kernel == stride (``compiler/schedule_conv_transpose.py``):
they leave TVM's conv2d_transpose for a matmul, and compiled models (PP-OCR's 2x2 stride 2
upsampling with bias and sigmoid, a 3x2 one, and an overlapping 3x3 stride 2 that keeps the
default build) match onnxruntime at rtol 1e-5."""

from __future__ import annotations

import numpy as np

# (C, O, kernel, strides, bias)
GEOMETRIES = [((8, 4), (2, 2), (2, 2), True), ((3, 5), (3, 2), (3, 2), False),
              ((4, 4), (3, 3), (2, 2), False)]          # the last overlaps: default build
H, W = 5, 6


def _model():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inputs, outputs, inits = [], [], [], []
    for k, ((c, o), kernel, strides, bias) in enumerate(GEOMETRIES):
        inits.append(numpy_helper.from_array(
            rng.standard_normal((c, o, *kernel)).astype(np.float32), f"w{k}"))
        names = [f"x{k}", f"w{k}"]
        if bias:
            inits.append(numpy_helper.from_array(rng.standard_normal(o).astype(np.float32),
                                                 f"b{k}"))
            names.append(f"b{k}")
        nodes.append(helper.make_node("ConvTranspose", names, [f"t{k}"], kernel_shape=list(kernel),
                                      strides=list(strides)))
        nodes.append(helper.make_node("Sigmoid", [f"t{k}"], [f"y{k}"]))
        inputs.append(helper.make_tensor_value_info(f"x{k}", TensorProto.FLOAT, [1, c, H, W]))
        outputs.append(helper.make_tensor_value_info(f"y{k}", TensorProto.FLOAT,
                                                     [1, o, None, None]))
    model = helper.make_model(helper.make_graph(nodes, "ct", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def test_transposed_convolutions_become_matmuls_and_match_onnxruntime(tmp_path):
    import onnx
    import onnxruntime as ort
    import tvm

    import edgert
    from edgert.compiler import compile_model, lower
    from edgert.targets import TARGETS

    model = _model()
    target = TARGETS["x86-avx2"]
    scheduled = lower._schedule_for_cpu(lower.to_relax(model), target, tvm.target.Target(
        target.tvm_target_dict(num_cores=2)))
    names = [gv.name_hint for gv, _ in scheduled.functions_items()]
    assert sum(n.startswith("blocks_to_nchw") for n in names) == 2, names
    assert scheduled.script().count("R.nn.conv2d_transpose(") == 1     # the overlapping one

    onnx.save(model, tmp_path / "ct.onnx")
    sess = edgert.Session(compile_model(tmp_path / "ct.onnx", tmp_path / "ct.edgert"))
    rng = np.random.default_rng(1)
    feed = {f"x{k}": rng.standard_normal((1, g[0][0], H, W)).astype(np.float32)
            for k, g in enumerate(GEOMETRIES)}
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for got, want in zip(sess.run(None, feed), ref.run(None, feed)):
        assert got.shape == want.shape
        # sigmoid outputs: onnxruntime's own sigmoid is within ~1e-7 absolute
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
