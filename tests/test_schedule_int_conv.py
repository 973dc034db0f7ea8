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


def _chain_model(layers, c_in=8, seed=2):
    """int8 ``x`` [2, c_in, H, W] (a static batch) through one ConvInteger per layer
    ``(out channels, group, kernel, stride, pad, bias, (to, lo, hi), multiplier scale)``, each
    followed by an int32 bias Add (where ``bias``) and an edgert.Requant (per channel, or per
    tensor where the scale is a float): the output ``y`` is the last Requant's."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgert.ops import DOMAIN
    from edgert.ops.requant import params

    rng = np.random.default_rng(seed)
    nodes, inits, x, c = [], [], "x", c_in
    for k, (o, group, kernel, stride, pad, bias, (to, lo, hi), scale) in enumerate(layers):
        w = rng.integers(-128, 128, (o, c // group, kernel, kernel)).astype(np.int8)
        m, e = params(np.array([scale]) if isinstance(scale, float)
                      else rng.uniform(*scale, o) * rng.choice([-1.0, 1.0], o))
        inits += [numpy_helper.from_array(w, f"w{k}"), numpy_helper.from_array(m, f"m{k}"),
                  numpy_helper.from_array(e, f"e{k}")]
        nodes.append(helper.make_node("ConvInteger", [x, f"w{k}"], [f"c{k}"], group=group,
                                      pads=[pad] * 4, strides=[stride, stride]))
        q = f"c{k}"
        if bias:
            inits.append(numpy_helper.from_array(
                rng.integers(-2000, 2000, (o, 1, 1)).astype(np.int32), f"bias{k}"))
            nodes.append(helper.make_node("Add", [q, f"bias{k}"], [f"b{k}"]))
            q = f"b{k}"
        x, c = ("y" if k == len(layers) - 1 else f"r{k}"), o
        to = helper.np_dtype_to_tensor_dtype(np.dtype(to))
        nodes.append(helper.make_node("Requant", [q, f"m{k}", f"e{k}"], [x], domain=DOMAIN,
                                      to=to, lo=lo, hi=hi, axis=1))
    graph = helper.make_graph(
        nodes, "int_conv_chain",
        [helper.make_tensor_value_info("x", TensorProto.INT8, [2, c_in, H, W])],
        [helper.make_tensor_value_info("y", to, [2, c, None, None])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid(DOMAIN, 1)])


INT8 = ("int8", -128, 127)
RELU8 = ("int8", 0, 127)


def _requant_model():
    """ConvInteger 3x3 (im2col + matmul) -> Requant -> 3x3 in 2 groups (batched matmul) ->
    Requant -> depthwise -> Requant (ReLU-clamped) -> depthwise stride 2 -> Requant (per
    tensor, no bias, int16); biases before the first three Requants."""
    return _chain_model([(8, 1, 3, 1, 1, True, INT8, (1e-4, 1e-3)),
                         (8, 2, 3, 1, 1, True, INT8, (1e-4, 1e-3)),
                         (8, 8, 3, 1, 1, True, RELU8, (1e-4, 1e-2)),
                         (8, 8, 3, 2, 1, False, ("int16", -32768, 32767), 3e-3)])


def _exact_against_numba(model, tmp_path, batch=2):
    """Compile ``model`` and compare its output with the numba backend's on two inputs."""
    import onnx

    import edgert
    from edgert.compiler import compile_model

    onnx.save(model, tmp_path / "m.onnx")
    art = compile_model(tmp_path / "m.onnx", tmp_path / "m.edgert")
    sess, ref = edgert.Session(art), edgert.Session(art, backend="numba")
    c = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    for seed in (1, 2):
        x = np.random.default_rng(seed).integers(-128, 128, (batch, c, H, W)).astype(np.int8)
        got, want = sess.run(None, {"x": x})[0], ref.run(None, {"x": x})[0]
        assert got.dtype == want.dtype and np.abs(want).max() > 0
        np.testing.assert_array_equal(got, want)


def test_a_requant_after_the_convolution_becomes_its_epilogue_exactly(tmp_path):
    import tvm

    from edgert.compiler import lower
    from edgert.targets import TARGETS

    model = _requant_model()
    target = TARGETS["x86-avx2"]
    tvm_target = tvm.target.Target(target.tvm_target_dict(num_cores=2))
    scheduled = lower._schedule_for_cpu(lower.to_relax(model), target, tvm_target)
    names = [gv.name_hint for gv, _ in scheduled.functions_items()]
    assert sum(n.startswith("int_conv") for n in names) == 2, names
    # the 3x3 convolution's result reaches the grouped one requantized NHWC (padded), the
    # grouped one's the depthwise one NCHW
    assert sum(n.startswith("requant_nhwc") for n in names) == 1, names
    assert sum(n.startswith("to_nchw_requant") for n in names) == 1, names
    assert not any(n.rstrip("0123456789") in ("requant", "to_nchw", "to_nchw_grouped_int")
                   for n in names), names
    assert "R.nn.conv2d(" not in scheduled.script()

    _exact_against_numba(model, tmp_path)


NHWC_CHAIN = [(16, 1, 1, 1, 0, True, RELU8, (1e-4, 1e-3)),
              (16, 16, 3, 1, 1, True, RELU8, (1e-4, 1e-2)),
              (24, 1, 1, 1, 0, True, INT8, (1e-4, 1e-3)),
              (24, 24, 5, 2, 2, False, INT8, (1e-4, 1e-2)),
              (8, 1, 1, 1, 0, True, INT8, (1e-4, 1e-3)),
              (8, 2, 3, 1, 1, True, RELU8, (1e-4, 1e-3)),
              (8, 1, 1, 1, 0, True, INT8, (0.1, 1.0))]   # shifts 30-34


def test_convolutions_between_pointwise_ones_run_nhwc_exactly(tmp_path):
    """1x1 -> depthwise (stride 1; then stride 2, 5x5) -> 1x1, as in a MobileNet block, then
    3x3 in 2 groups -> 1x1, as in a RegNet block: the depthwise kernels and the grouped im2col
    read the requantized matmul result NHWC (requant_nhwc, padded for the grouped one; no
    to_nchw_requant), the depthwise kernels write NHWC for the pointwise convolution after
    them and the grouped matmul's result is requantized NHWC for it (no pad_nhwc). The
    Requants' shifts are >= 32 (their high-word form) but for the last one's (30-34)."""
    import tvm

    from edgert.compiler import lower
    from edgert.targets import TARGETS

    model = _chain_model(NHWC_CHAIN)
    target = TARGETS["x86-avx2"]
    tvm_target = tvm.target.Target(target.tvm_target_dict(num_cores=2))
    scheduled = lower._schedule_for_cpu(lower.to_relax(model), target, tvm_target)
    names = [gv.name_hint for gv, _ in scheduled.functions_items()]
    main = scheduled["main"].script()
    assert main.count("requant_nhwc") == 4 and main.count("int_dw_nhwc") == 2, names
    assert main.count("pad_nhwc") == 1, main          # the input's only
    assert main.count("to_nchw_requant") == 1, main   # the output's only
    _exact_against_numba(model, tmp_path)


def test_on_avx512_the_kernels_build_and_the_grouped_matmul_takes_vpmaddwd(tmp_path):
    """The VNNI kernel takes one constant B packed at compile time; a grouped convolution's
    B is one per group, so the (VNNI, AVX2) pair hands it to the AVX2 kernel instead of
    failing; the int8 x constant int8 matmuls of the pointwise convolutions stay on VNNI.
    Every kernel builds for x86-avx512; where this CPU has AVX-512 VNNI the build runs and
    matches the numba backend."""
    import onnx

    import edgert
    from edgert.artifact import read_artifact
    from edgert.compiler import compile_model
    from edgert.compiler.pipeline import LIB_MEMBER
    from edgert.targets import host_cpu_features

    model = _chain_model(NHWC_CHAIN)
    onnx.save(model, tmp_path / "m.onnx")
    art = compile_model(tmp_path / "m.onnx", tmp_path / "m.edgert", target="x86-avx512",
                        threads=2)
    lib = read_artifact(art).members[LIB_MEMBER]
    for symbol in (b"int_matmul_x86_int8_int8_batched", b"int_matmul_vnni_int8_packed",
                   b"int_dw_nhwc", b"requant_nhwc", b"im2col_groups", b"to_nchw_requant"):
        assert symbol in lib, symbol
    if "avx512_vnni" not in host_cpu_features():
        return            # built and checked above; running it needs an AVX-512 VNNI CPU
    sess, ref = edgert.Session(art), edgert.Session(art, backend="numba")
    x = np.random.default_rng(3).integers(-128, 128, (2, 8, H, W)).astype(np.int8)
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], ref.run(None, {"x": x})[0])
