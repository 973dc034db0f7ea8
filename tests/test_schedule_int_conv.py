"""Integer grouped convolutions (``compiler/schedule_int_conv.py``): ``ConvInteger`` with
``group = C`` leaves TVM's default conv2d for its own kernel, other grouped ones become a
batched integer matmul over the groups, a Requant after either (or after an im2col
convolution) becomes its epilogue, and compiled models match the direct convolution and the
numba backend bit for bit over strides, padding, dilation, a channel multiplier and a
symbolic batch."""

from __future__ import annotations

import numpy as np

# (C, O, groups, kernel, strides, pads (top, left, bottom, right), dilations)
GEOMETRIES = [
    (8, 8, 8, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),      # MobileNet 3x3 depthwise
    (6, 6, 6, (5, 5), (2, 2), (2, 2, 2, 2), (1, 1)),      # MobileNetV3 5x5 stride 2
    (4, 8, 4, (3, 2), (2, 1), (0, 1, 2, 0), (2, 1)),      # multiplier 2, ragged, dilated
]
GROUPED = [
    (8, 6, 2, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),      # 4 channels a group, 3 out
    (8, 16, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),     # RegNet-like 3x3, 4 out a group
    (6, 4, 2, (3, 2), (1, 2), (0, 1, 2, 0), (2, 1)),      # ragged, dilated, strided along W
    (8, 40, 2, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),     # 1x1, 20 out a group (> 16 columns)
]
H, W = 11, 9


def _model(geometries=GEOMETRIES):
    """One int8 input ``x`` [n, 8, H, W] feeding one ConvInteger per geometry (on its first C
    channels, through a Slice), with full-range int8 weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, outputs, inits, weights = [], [], [], []
    for k, (c, o, groups, kernel, strides, pads, dilations) in enumerate(geometries):
        weight = rng.integers(-128, 128, (o, c // groups, *kernel)).astype(np.int8)
        weights.append(weight)
        inits += [numpy_helper.from_array(weight, f"w{k}"),
                  numpy_helper.from_array(np.array([0], np.int64), f"start{k}"),
                  numpy_helper.from_array(np.array([c], np.int64), f"end{k}"),
                  numpy_helper.from_array(np.array([1], np.int64), f"axis{k}")]
        nodes.append(helper.make_node("Slice", ["x", f"start{k}", f"end{k}", f"axis{k}"],
                                      [f"x{k}"]))
        nodes.append(helper.make_node("ConvInteger", [f"x{k}", f"w{k}"], [f"y{k}"],
                                      group=groups, strides=list(strides), pads=list(pads),
                                      dilations=list(dilations)))
        outputs.append(helper.make_tensor_value_info(f"y{k}", TensorProto.INT32,
                                                     ["n", o, None, None]))
    graph = helper.make_graph(nodes, "int_grouped",
                              [helper.make_tensor_value_info("x", TensorProto.INT8,
                                                             ["n", 8, H, W])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model, weights


def test_reference_matches_a_plain_loop():
    from edgert.compiler.schedule_int_conv import int_conv_reference

    rng = np.random.default_rng(1)
    x = rng.integers(-128, 128, (1, 4, 5, 6)).astype(np.int8)
    w = rng.integers(-128, 128, (4, 2, 3, 3)).astype(np.int8)
    got = int_conv_reference(x, w, 2, (1, 1), (1, 1, 1, 1), (1, 1))
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    want = np.zeros((1, 4, 5, 6), np.int64)
    for f in range(4):
        for y in range(5):
            for z in range(6):
                want[0, f, y, z] = (xp[0, f // 2 * 2:f // 2 * 2 + 2, y:y + 3, z:z + 3]
                                    * w[f]).sum()
    np.testing.assert_array_equal(got, want)


def test_integer_grouped_convolutions_get_their_kernels_and_are_exact(tmp_path):
    """Depthwise ones the int_conv kernel, other grouped ones im2col_groups + the batched
    vpmaddwd matmul (its groups as the batch, B packed by the kernel) + to_nchw_grouped_int."""
    import onnx
    import tvm

    import edgert
    from edgert.compiler import compile_model, lower
    from edgert.compiler.schedule_int_conv import int_conv_reference
    from edgert.targets import TARGETS

    geometries = GEOMETRIES + GROUPED
    model, weights = _model(geometries)
    target = TARGETS["x86-avx2"]
    tvm_target = tvm.target.Target(target.tvm_target_dict(num_cores=2))
    scheduled = lower._schedule_for_cpu(lower.to_relax(model), target, tvm_target)
    names = [gv.name_hint for gv, _ in scheduled.functions_items()]
    assert sum(n.startswith("int_conv") for n in names) == len(GEOMETRIES), names
    assert sum(n.startswith("to_nchw_grouped_int") for n in names) == len(GROUPED), names
    assert sum(n.startswith("int_matmul_x86_int8_int8_batched") for n in names) == len(
        GROUPED), names
    assert "R.nn.conv2d(" not in scheduled.script()

    onnx.save(model, tmp_path / "g.onnx")
    sess = edgert.Session(compile_model(tmp_path / "g.onnx", tmp_path / "g.edgert"))
    for batch in (1, 3):
        x = np.random.default_rng(batch).integers(-128, 128, (batch, 8, H, W)).astype(np.int8)
        got = sess.run(None, {"x": x})
        for k, (c, _, groups, _, strides, pads, dilations) in enumerate(geometries):
            want = int_conv_reference(x[:, :c], weights[k], groups, strides, pads, dilations)
            assert got[k].dtype == np.int32 and got[k].shape == want.shape
            np.testing.assert_array_equal(got[k], want)


def _requant_model():
    """int8 ``x`` [2, 8, H, W] (a static batch: the padding in two passes) -> ConvInteger 3x3
    (im2col + matmul) -> Add(int32 bias) -> edgert.Requant (per channel, int8) -> ConvInteger
    3x3 in 2 groups (batched matmul) -> Add -> Requant (per channel, int8) -> ConvInteger
    depthwise -> Add -> Requant (per channel, ReLU-clamped int8) -> ConvInteger depthwise
    stride 2 -> Requant (per tensor, no bias, int16)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgert.ops import DOMAIN
    from edgert.ops.requant import params

    rng = np.random.default_rng(2)
    ws = [rng.integers(-128, 128, shape).astype(np.int8)
          for shape in ((8, 8, 3, 3), (8, 4, 3, 3), (8, 1, 3, 3), (8, 1, 3, 3))]
    biases = [rng.integers(-2000, 2000, (8, 1, 1)).astype(np.int32) for _ in range(3)]
    requants = [params(rng.uniform(1e-4, 1e-3, 8) * rng.choice([-1.0, 1.0], 8)),
                params(rng.uniform(1e-4, 1e-3, 8) * rng.choice([-1.0, 1.0], 8)),
                params(rng.uniform(1e-4, 1e-2, 8) * rng.choice([-1.0, 1.0], 8)),
                params(np.array([3e-3]))]
    inits = [numpy_helper.from_array(v, f"{name}{k}") for name, values in
             (("w", ws), ("bias", biases), ("m", [m for m, _ in requants]),
              ("e", [e for _, e in requants])) for k, v in enumerate(values)]
    clamps = [(TensorProto.INT8, -128, 127), (TensorProto.INT8, -128, 127),
              (TensorProto.INT8, 0, 127), (TensorProto.INT16, -32768, 32767)]
    nodes, x = [], "x"
    for k, (group, stride) in enumerate(((1, 1), (2, 1), (8, 1), (8, 2))):
        nodes.append(helper.make_node("ConvInteger", [x, f"w{k}"], [f"c{k}"], group=group,
                                      pads=[1, 1, 1, 1], strides=[stride, stride]))
        q = f"c{k}"
        if k < 3:
            nodes.append(helper.make_node("Add", [q, f"bias{k}"], [f"b{k}"]))
            q = f"b{k}"
        to, lo, hi = clamps[k]
        x = "y" if k == 3 else f"r{k}"
        nodes.append(helper.make_node("Requant", [q, f"m{k}", f"e{k}"], [x], domain=DOMAIN,
                                      to=to, lo=lo, hi=hi, axis=1))
    graph = helper.make_graph(
        nodes, "int_conv_requant",
        [helper.make_tensor_value_info("x", TensorProto.INT8, [2, 8, H, W])],
        [helper.make_tensor_value_info("y", TensorProto.INT16, [2, 8, None, None])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid(DOMAIN, 1)])


def test_a_requant_after_the_convolution_becomes_its_epilogue_exactly(tmp_path):
    import onnx
    import tvm

    import edgert
    from edgert.compiler import compile_model, lower
    from edgert.targets import TARGETS

    model = _requant_model()
    target = TARGETS["x86-avx2"]
    tvm_target = tvm.target.Target(target.tvm_target_dict(num_cores=2))
    scheduled = lower._schedule_for_cpu(lower.to_relax(model), target, tvm_target)
    names = [gv.name_hint for gv, _ in scheduled.functions_items()]
    assert sum(n.startswith("int_conv") for n in names) == 2, names
    assert sum(n.startswith("to_nchw_requant") for n in names) == 2, names
    assert not any(n.startswith("requant") or n.rstrip("0123456789") in (
        "to_nchw", "to_nchw_grouped_int") for n in names), names
    assert "R.nn.conv2d(" not in scheduled.script()

    onnx.save(model, tmp_path / "r.onnx")
    art = compile_model(tmp_path / "r.onnx", tmp_path / "r.edgert")
    sess, ref = edgert.Session(art), edgert.Session(art, backend="numba")
    for seed in (1, 2):
        x = np.random.default_rng(seed).integers(-128, 128, (2, 8, H, W)).astype(np.int8)
        got, want = sess.run(None, {"x": x})[0], ref.run(None, {"x": x})[0]
        assert got.dtype == np.int16 and np.abs(want).max() > 0
        np.testing.assert_array_equal(got, want)


def test_on_a_vnni_target_the_grouped_matmul_takes_the_vpmaddwd_kernel():
    """The VNNI kernel takes one constant B packed at compile time; a grouped convolution's
    B is one per group, so the (VNNI, AVX2) pair hands it to the AVX2 kernel instead of
    failing; the int8 x constant int8 matmul of an ungrouped convolution stays on VNNI."""
    import tvm

    from edgert.compiler import lower
    from edgert.targets import TARGETS

    target = TARGETS["x86-avx512"]
    tvm_target = tvm.target.Target(target.tvm_target_dict(num_cores=2))
    scheduled = lower._schedule_for_cpu(lower.to_relax(_requant_model()), target, tvm_target)
    names = [gv.name_hint for gv, _ in scheduled.functions_items()]
    assert sum(n.startswith("int_matmul_x86_int8_int8_batched") for n in names) == 1, names
    assert sum(n.startswith("int_matmul_vnni_int8_packed") for n in names) == 1, names
