"""Convolutions as im2col + matmul (``compiler/schedule_conv.py``): the im2col kernel against
its numpy spec, the spec against onnxruntime's convolution, and compiled Conv / ConvInteger
models against onnxruntime over a grid of geometries (padding, stride, dilation, ragged
channels, symbolic batch)."""

from __future__ import annotations

import numpy as np
import pytest

from edgert.compiler.schedule_conv import im2col_reference, im2col_te, pad_nhwc_te
from ophelpers import assert_bit_exact, run_te

# (C, O, H, W, kernel, strides, ONNX pads (top, left, bottom, right), dilations, auto_pad)
GEOMETRIES = [
    (3, 5, 9, 7, (3, 2), (2, 1), (1, 0, 2, 1), (1, 2), None),   # ragged, asymmetric, dilated
    (3, 17, 8, 8, (4, 4), (4, 4), (0, 0, 0, 0), (1, 1), None),  # ViT patchify
    (8, 6, 6, 5, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), None),   # pointwise
    (4, 9, 7, 7, (3, 3), (2, 2), None, (1, 1), "SAME_UPPER"),
    (2, 3, 5, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), None),
]


def _ids() -> list[str]:
    return [f"c{g[0]}o{g[1]}k{g[4][0]}x{g[4][1]}s{g[5][0]}{g[8] or ''}" for g in GEOMETRIES]


def _conv_model(geometry: tuple, weight: np.ndarray, integer: bool, group: int = 1):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    c, o, h, w, kernel, strides, pads, dilations, auto_pad = geometry
    attrs = {"strides": list(strides), "dilations": list(dilations), "group": group}
    if auto_pad:
        attrs["auto_pad"] = auto_pad
    else:
        attrs["pads"] = list(pads)
    op, xt, yt = (("ConvInteger", TensorProto.INT8, TensorProto.INT32) if integer
                  else ("Conv", TensorProto.FLOAT, TensorProto.FLOAT))
    graph = helper.make_graph(
        [helper.make_node(op, ["x", "w"], ["y"], **attrs)], "conv",
        [helper.make_tensor_value_info("x", xt, ["n", c, h, w])],
        [helper.make_tensor_value_info("y", yt, ["n", o, None, None])],
        [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _ort_conv(geometry: tuple, weight: np.ndarray, x: np.ndarray, group: int = 1) -> np.ndarray:
    """onnxruntime's float32 Conv (exact for the small integers used here)."""
    import onnxruntime as ort

    model = _conv_model(geometry, weight.astype(np.float32), False, group)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x.astype(np.float32)})[0]


def _explicit_pads(geometry: tuple) -> tuple[int, int, int, int]:
    c, o, h, w, kernel, strides, pads, dilations, auto_pad = geometry
    if not auto_pad:
        return pads
    totals = [max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
              for size, k, s, d in zip((h, w), kernel, strides, dilations)]
    return totals[0] // 2, totals[1] // 2, totals[0] - totals[0] // 2, totals[1] - totals[1] // 2


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=_ids())
def test_im2col_reference_times_weight_is_the_convolution(geometry):
    c, o, h, w, kernel, strides, _, dilations, _ = geometry
    rng = np.random.default_rng(0)
    x = rng.integers(-8, 8, (2, c, h, w)).astype(np.float32)
    weight = rng.integers(-8, 8, (o, c, *kernel)).astype(np.float32)
    cols = im2col_reference(x, kernel, strides, _explicit_pads(geometry), dilations)
    n, oh, ow = cols.shape[:3]
    w_t = weight.transpose(0, 2, 3, 1).reshape(o, -1).T           # rows in (kh, kw, c) order
    ours = (cols.reshape(n, oh * ow, -1) @ w_t).transpose(0, 2, 1)
    np.testing.assert_array_equal(ours.reshape(n, o, oh, ow), _ort_conv(geometry, weight, x))


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=_ids())
def test_im2col_kernels_match_reference(geometry):
    c, _, h, w, kernel, strides, _, dilations, _ = geometry
    x = np.random.default_rng(1).integers(-128, 128, (2, c, h, w)).astype(np.int8)
    pads = _explicit_pads(geometry)

    def pad_then_im2col(data):
        return im2col_te(pad_nhwc_te(data, pads), kernel, strides, dilations)

    got = run_te(pad_then_im2col, [x])
    assert_bit_exact("im2col", got, im2col_reference(x, kernel, strides, pads, dilations))


@pytest.mark.parametrize("integer", [False, True], ids=["float32", "int8"])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=_ids())
def test_compiled_convolution_matches_onnxruntime(tmp_path, geometry, integer):
    import onnx

    import edgert
    from edgert.compiler import compile_model

    c, o, h, w, kernel = geometry[:5]
    rng = np.random.default_rng(2)
    if integer:
        weight = rng.integers(-128, 128, (o, c, *kernel)).astype(np.int8)
        x = rng.integers(-128, 128, (3, c, h, w)).astype(np.int8)
    else:
        weight = rng.standard_normal((o, c, *kernel)).astype(np.float32)
        x = rng.standard_normal((3, c, h, w)).astype(np.float32)
    onnx.save(_conv_model(geometry, weight, integer), tmp_path / "conv.onnx")
    sess = edgert.Session(compile_model(tmp_path / "conv.onnx", tmp_path / "conv.edgert"))
    got = sess.run(None, {"x": x})[0]
    want = _ort_conv(geometry, weight, x)
    if integer:
        assert_bit_exact("ConvInteger", got, want.astype(np.int32))
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("integer", [False, True], ids=["float32", "int8"])
def test_convolutions_run_on_the_matmul_kernels(integer):
    import tvm

    from edgert.compiler import lower
    from edgert.compiler.schedule_intmatmul import target_has_avx2
    from edgert.targets import TARGETS

    target = TARGETS["x86-avx2"]
    assert target_has_avx2(target)
    geometry = GEOMETRIES[0]
    c, o, _, _, kernel = geometry[:5]
    weight = np.ones((o, c, *kernel), np.int8 if integer else np.float32)
    mod = lower.to_relax(_conv_model(geometry, weight, integer))
    tvm_target = tvm.target.Target(target.tvm_target_dict(num_cores=2))
    scheduled = lower._schedule_for_cpu(mod, target, tvm_target)
    names = [gv.name_hint for gv, _ in scheduled.functions_items()]
    kernel_prefix = "int_matmul_x86_int8" if integer else "matmul_fma_x86"
    assert any(n.startswith(kernel_prefix) for n in names), names
    assert "im2col" in names
    assert "R.nn.conv2d(" not in scheduled.script()


def test_grouped_convolutions_are_left_to_schedule_grouped():
    from edgert.compiler.lower import to_relax
    from edgert.compiler.schedule_conv import convs_as_matmuls

    geometry = (4, 6, 7, 7, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), None)
    weight = np.ones((6, 2, 3, 3), np.float32)
    mod = to_relax(_conv_model(geometry, weight, False, group=2))
    assert convs_as_matmuls(mod) is mod       # tests/test_schedule_grouped.py: its kernels


def test_bias_activation_and_residual_add_fuse_into_one_pass(tmp_path):
    """Conv + bias -> Relu, Conv + bias -> + residual -> Clip, Conv -> x * Sigmoid(x) (SiLU):
    the convolutions stay NHWC (``schedule_nhwc``), and the bias, activation and residual add
    after each of the first two are one kernel with the next convolution's zero padding (one
    pass over the output); the results match onnxruntime (rtol 1e-5)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    import edgert
    from edgert.compiler import compile_model

    rng = np.random.default_rng(4)
    c, hw = 8, 6
    inits = [numpy_helper.from_array(rng.standard_normal((c, c, 3, 3)).astype(np.float32) / 8,
                                     f"w{k}") for k in range(3)]
    inits += [numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), f"b{k}")
              for k in range(2)]
    inits += [numpy_helper.from_array(np.float32(v), name) for v, name in ((0, "lo"), (6, "hi"))]
    conv = {"pads": [1, 1, 1, 1]}
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], **conv),
             helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], **conv),
             helper.make_node("Add", ["c1", "x"], ["s1"]),
             helper.make_node("Clip", ["s1", "lo", "hi"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], **conv),
             helper.make_node("Sigmoid", ["c2"], ["g2"]),
             helper.make_node("Mul", ["c2", "g2"], ["y"])]
    graph = helper.make_graph(
        nodes, "fused", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, hw, hw])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "fused.onnx")
    sess = edgert.Session(compile_model(tmp_path / "fused.onnx", tmp_path / "fused.edgert"))
    x = rng.standard_normal((1, c, hw, hw)).astype(np.float32)
    names = [k.name for k in sess.kernel_times({"x": x}, repeats=1)]
    fused = [n for n in names if n.startswith("fused_") and n.endswith("nhwc_pad")]
    assert len(fused) == 2, names
    assert not any(n.startswith(("to_nchw", "fused_to_nchw", "add", "fused_add", "relu",
                                 "maximum", "minimum")) for n in names), names
    assert sum(n.startswith("nhwc_to_nchw") for n in names) == 1, names     # the output
    want = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], want, rtol=1e-5,
                               atol=1e-5 * np.abs(want).max())
