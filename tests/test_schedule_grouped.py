"""Grouped float32 convolutions (``compiler/schedule_grouped.py``): the grouped im2col kernel
against its numpy spec, the spec times the per-group weights against onnxruntime's convolution,
and compiled models on regnet_x_400mf's grouped 3x3 geometries (16 channels a group) plus a
ragged one against onnxruntime and TVM's default build (rtol 1e-4: the kernel sums each
group's products in (kh, kw, c) order as fused multiply-adds, the others in their own orders).
"""

from __future__ import annotations

import numpy as np
import pytest

from edgert.compiler.schedule_conv import pad_nhwc_te
from edgert.compiler.schedule_grouped import (grouped_weight, im2col_grouped_reference,
                                              im2col_grouped_te)
from ophelpers import assert_bit_exact, run_te

# (C, O, groups, H, W, kernel, strides, pads (top, left, bottom, right), dilations)
GEOMETRIES = [
    (32, 32, 2, 16, 16, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),     # regnet block1 (s2)
    (64, 64, 4, 10, 10, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),     # regnet block2
    (400, 400, 25, 7, 7, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),    # regnet block4
    (6, 9, 3, 9, 7, (3, 2), (2, 1), (1, 0, 2, 1), (1, 2)),         # ragged, dilated
    (8, 12, 4, 5, 6, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),        # grouped pointwise
]
RTOL = 1e-4


def _ids() -> list[str]:
    return [f"c{g[0]}o{g[1]}g{g[2]}k{g[5][0]}x{g[5][1]}s{g[6][0]}" for g in GEOMETRIES]


def _conv_node(geometry: tuple, x: str, w: str, y: str):
    from onnx import helper

    c, o, groups, h, w_, kernel, strides, pads, dilations = geometry
    return helper.make_node("Conv", [x, w], [y], group=groups, strides=list(strides),
                            pads=list(pads), dilations=list(dilations))


def _model(geometries: list[tuple], batch: int | str, weights: list[np.ndarray]):
    """One input per geometry ``x<k>`` [batch, C, H, W] feeding its grouped Conv."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inputs, outputs, inits = [], [], [], []
    for k, (g, weight) in enumerate(zip(geometries, weights)):
        c, o, _, h, w = g[:5]
        inits.append(numpy_helper.from_array(weight, f"w{k}"))
        nodes.append(_conv_node(g, f"x{k}", f"w{k}", f"y{k}"))
        inputs.append(helper.make_tensor_value_info(f"x{k}", TensorProto.FLOAT, [batch, c, h, w]))
        outputs.append(helper.make_tensor_value_info(f"y{k}", TensorProto.FLOAT,
                                                     [batch, o, None, None]))
    model = helper.make_model(helper.make_graph(nodes, "grouped", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _ort(model, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=_ids())
def test_grouped_im2col_reference_times_weights_is_the_convolution(geometry):
    c, o, groups, h, w, kernel, strides, pads, dilations = geometry
    rng = np.random.default_rng(0)
    x = rng.integers(-8, 8, (2, c, h, w)).astype(np.float32)
    weight = rng.integers(-8, 8, (o, c // groups, *kernel)).astype(np.float32)
    cols = im2col_grouped_reference(x, groups, kernel, strides, pads, dilations)
    n, _, oh, ow = cols.shape[:4]
    y = cols.reshape(n * groups, oh * ow, -1) @ grouped_weight(weight, groups, n)
    ours = y.reshape(n, groups, oh, ow, o // groups).transpose(0, 1, 4, 2, 3)
    want = _ort(_model([geometry], 2, [weight]), {"x0": x})[0]     # exact: small integers
    np.testing.assert_array_equal(ours.reshape(n, o, oh, ow), want)


@pytest.mark.parametrize("geometry", GEOMETRIES[3:], ids=_ids()[3:])
def test_grouped_im2col_kernel_matches_reference(geometry):
    c, _, groups, h, w, kernel, strides, pads, dilations = geometry
    x = np.random.default_rng(1).standard_normal((2, c, h, w)).astype(np.float32)

    def pad_then_im2col(data):
        return im2col_grouped_te(pad_nhwc_te(data, pads), groups, kernel, strides, dilations)

    got = run_te(pad_then_im2col, [x])
    assert_bit_exact("im2col_grouped", got,
                     im2col_grouped_reference(x, groups, kernel, strides, pads, dilations))


def _compile(model, tmp_path, name: str, cache: bool | None = None):
    import onnx

    import edgert
    from edgert.compiler import compile_model

    onnx.save(model, tmp_path / f"{name}.onnx")
    return edgert.Session(compile_model(tmp_path / f"{name}.onnx", tmp_path / f"{name}.edgert",
                                        cache=cache))


def test_grouped_convolutions_get_the_batched_matmul_and_match_onnxruntime_and_tvm(
        tmp_path, monkeypatch):
    import tvm

    from edgert.compiler import lower, schedule_grouped, schedule_nhwc
    from edgert.targets import TARGETS

    rng = np.random.default_rng(2)
    weights = [(rng.standard_normal((g[1], g[0] // g[2], *g[5])) / np.sqrt(g[0] // g[2] * 9))
               .astype(np.float32) for g in GEOMETRIES]
    model = _model(GEOMETRIES, 1, weights)
    target = TARGETS["x86-avx2"]
    scheduled = lower._schedule_for_cpu(lower.to_relax(model), target, tvm.target.Target(
        target.tvm_target_dict(num_cores=2)))
    names = [gv.name_hint for gv, _ in scheduled.functions_items()]
    script = scheduled.script()
    assert script.count("R.call_tir(cls.matmul_fma_x86_float32_float32_batched") >= 3, names
    # schedule_nhwc's NHWC variant (the batch is static)
    assert "nhwc_im2col_grouped" in names and "nhwc_to_nhwc_grouped" in names
    assert "R.nn.conv2d(" not in script

    feed = {f"x{k}": rng.standard_normal((1, *g[:1], *g[3:5])).astype(np.float32)
            for k, g in enumerate(GEOMETRIES)}
    ours = _compile(model, tmp_path, "ours").run(None, feed)
    with monkeypatch.context() as m:        # TVM's default loop nest
        m.setattr(schedule_grouped, "grouped_convs", lambda mod: mod)
        m.setattr(schedule_nhwc, "nhwc_convs", lambda mod: mod)
        default = _compile(model, tmp_path, "default", cache=False).run(None, feed)
    for got, ort_y, tvm_y in zip(ours, _ort(model, feed), default):
        assert got.shape == ort_y.shape
        for want in (ort_y, tvm_y):
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * np.abs(want).max())


def test_static_batch_of_two_and_symbolic_batch_match_onnxruntime(tmp_path):
    geometry = GEOMETRIES[3]
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((9, 2, 3, 2)).astype(np.float32)
    symbolic = _model([geometry], "n", [weight])
    x = rng.standard_normal((2, 6, 9, 7)).astype(np.float32)
    for name, model in (("static", _model([geometry], 2, [weight])), ("symbolic", symbolic)):
        got = _compile(model, tmp_path, name).run(None, {"x0": x})[0]
        want = _ort(model, {"x0": x})[0]
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * np.abs(want).max())


def test_symbolic_batch_keeps_the_default_build():
    from edgert.compiler.lower import to_relax
    from edgert.compiler.schedule_grouped import grouped_convs

    weight = np.ones((9, 2, 3, 2), np.float32)
    mod = to_relax(_model([GEOMETRIES[3]], "n", [weight]))
    assert grouped_convs(mod) is mod
