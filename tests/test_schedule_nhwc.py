"""Float32 convolution chains kept NHWC (``compiler/schedule_nhwc.py``): a small MobileNet-like
graph (stem, max pooling, pointwise, depthwise with a foldable bias + Clip, squeeze-excite,
a grouped convolution with a residual add, a channel Split and Concat, a nearest Resize, a
strided 5x5 depthwise with PyTorch's hard-swish, a depthwise with ONNX HardSwish) loses every
NCHW convolution and all but the needed transposes, and the compiled model matches
onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

BATCH, H, W = 2, 20, 20


def _model():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def conv(x: str, out: str, o: int, c: int, k: int, stride: int = 1, group: int = 1) -> str:
        w = const(f"{out}_w", rng.standard_normal((o, c // group, k, k)) / np.sqrt(c * k * k))
        b = const(f"{out}_b", rng.standard_normal(o) * 0.1)
        nodes.append(helper.make_node("Conv", [x, w, b], [out], kernel_shape=[k, k],
                                      strides=[stride, stride], pads=[k // 2] * 4, group=group))
        return out

    def const_i64(name: str, value: list[int]) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, np.int64), name))
        return name

    def node(op: str, inputs: list[str], out: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    lo, hi, three, six = (const(n, np.array(v)) for n, v in
                          (("lo", 0.0), ("hi", 6.0), ("three", 3.0), ("six", 6.0)))
    x = node("Relu", [conv("x", "stem", 16, 3, 3, stride=2)], "stem_relu")
    x = node("MaxPool", [x], "pool", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    x = node("Clip", [conv(x, "pw", 32, 16, 1), lo, hi], "pw_act")
    dw = node("Clip", [conv(x, "dw", 32, 32, 3, group=32), lo, hi], "dw_act")   # folded
    se = node("GlobalAveragePool", [dw], "se_pool")
    se = node("Relu", [conv(se, "se1", 8, 32, 1)], "se_relu")
    se = node("HardSigmoid", [conv(se, "se2", 32, 8, 1)], "se_gate", alpha=1 / 6, beta=0.5)
    x = node("Mul", [dw, se], "se_out")
    g = node("Relu", [conv(x, "grouped", 32, 32, 3, group=4)], "grouped_relu")
    x = node("Add", [g, x], "residual")
    nodes.append(helper.make_node("Split", [x, const_i64("halves", [16, 16])],
                                  ["half0", "half1"], axis=1))
    x = node("Concat", ["half1", "half0"], "swapped", axis=1)
    x = node("Resize", [x, "", const("scales", [1, 1, 2, 2])], "up", mode="nearest")
    d5 = conv(x, "dw5", 32, 32, 5, stride=2, group=32)
    gate = node("Clip", [node("Add", [d5, three], "hs_add"), lo, hi], "hs_clip")
    x = node("Mul", [d5, node("Div", [gate, six], "hs_div")], "hswish")   # folded
    x = node("HardSwish", [conv(x, "dw6", 32, 32, 3, group=32)], "hswish6")   # relax.clip
    y = node("Flatten", [node("GlobalAveragePool", [x], "head_pool")], "y")
    graph = helper.make_graph(
        nodes, "nhwc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, 3, H, W])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [BATCH, 32]),
         helper.make_tensor_value_info("dw_act", TensorProto.FLOAT, [BATCH, 32, H // 2, W // 2])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def test_convolution_chain_stays_nhwc_and_matches_onnxruntime(tmp_path):
    import onnx
    import onnxruntime as ort

    import edgert
    from edgert.compiler import compile_model
    from edgert.compiler.lower import to_relax
    from edgert.compiler.schedule_nhwc import nhwc_convs

    model = _model()
    mod = nhwc_convs(to_relax(model))
    script = mod.script()
    assert "R.nn.conv2d(" not in script and "R.nn.max_pool2d(" not in script
    lines = script.splitlines()
    for op, nhwc in (("R.split(", "axis=3"), ("R.concat(", "axis=3"),
                     ("R.image.resize2d(", 'layout="NHWC"')):
        assert any(op in line and nhwc in line for line in lines), op
    # back to NCHW only where the graph needs it: its two outputs
    assert script.count("R.call_tir(cls.nhwc_to_nchw") == 2, script
    kernels = {gv.name_hint: f for gv, f in mod.functions_items()}
    assert sum(n.startswith("nhwc_depthwise") for n in kernels) == 3
    # the 5x5 one applies the hard-swish after it (x * (clip(x + 3, 0, 6) / 6))
    assert "T.float32(3.0)" in kernels["nhwc_depthwise1"].script()
    assert "nhwc_max_pool" in kernels
    # the first depthwise kernel applies its bias and Clip(0, 6) itself, and the pointwise
    # convolution's bias and Clip to its taps (x, w, bias, in_bias, out)
    assert "T.float32(6.0)" in kernels["nhwc_depthwise"].script()
    assert len(kernels["nhwc_depthwise"].params) == 5

    onnx.save(model, tmp_path / "m.onnx")
    sess = edgert.Session(compile_model(tmp_path / "m.onnx", tmp_path / "m.edgert"))
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((BATCH, 3, H, W)).astype(np.float32)
    for got, want in zip(sess.run(None, {"x": x}), ref.run(None, {"x": x})):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_integer_graphs_are_left_alone():
    from test_schedule_depthwise import _model as depthwise_model

    from edgert.compiler.lower import to_relax
    from edgert.compiler.schedule_nhwc import nhwc_convs

    mod = to_relax(depthwise_model(integer=True))
    assert nhwc_convs(mod) is mod


def _targets() -> list:
    """The host's target (AVX-512 where the CPU has it) and, on an x86 CPU with AVX2, the
    x86-avx2 one (the AVX2 path forced)."""
    from edgert.targets import TARGETS, host_arch, host_cpu_features

    avx2 = host_arch() == "x86_64" and "avx2" in host_cpu_features()
    return ["host", pytest.param("x86-avx2", marks=pytest.mark.skipif(
        not avx2 or "x86-avx2" not in TARGETS, reason="needs an x86-64 CPU with AVX2"))]


@pytest.mark.parametrize("target", _targets())
def test_depthwise_and_max_pool_kernels_match_numpy(target):
    """The NHWC depthwise kernel (bias and Clip(0, 6) folded in; 3x3 stride 1 and 5x5
    stride 2, output widths 12 and 5 for the 4- and 1-column tiles; and with the previous
    layer's bias and Clip applied to its taps, padding inside) and the max-pooling kernel,
    against numpy."""
    import tvm
    from tvm import te

    from edgert.compiler.schedule_depthwise import depthwise_nhwc_te, schedule_depthwise_nhwc
    from edgert.compiler.schedule_nhwc import max_pool_nhwc_te
    from edgert.targets import TARGETS, resolve_host

    tvm_target = tvm.target.Target((resolve_host() if target == "host" else TARGETS[target])
                                   .tvm_target_dict(num_cores=2))
    rng = np.random.default_rng(5)

    def run(func, arrays, shape):
        out = tvm.runtime.tensor(np.zeros(shape, np.float32))
        tvm.compile(func, target=tvm_target)(*map(tvm.runtime.tensor, arrays), out)
        return out.numpy()

    for k, s, ow in ((3, 1, 12), (5, 2, 5)):
        c, oh = 16, 3
        x = rng.standard_normal((1, s * (oh - 1) + k, s * (ow - 1) + k, c)).astype(np.float32)
        w = rng.standard_normal((k, k, c)).astype(np.float32)
        b = rng.standard_normal(c).astype(np.float32)
        ph = [te.placeholder(a.shape, "float32", name=n) for a, n in ((x, "x"), (w, "w"),
                                                                      (b, "b"))]
        out = depthwise_nhwc_te(*ph, (s, s), (1, 1), (0.0, 6.0))
        func = schedule_depthwise_nhwc(te.create_prim_func([*ph, out]))
        want = sum(x[:, i:i + s * (oh - 1) + 1:s, j:j + s * (ow - 1) + 1:s] * w[i, j]
                   for i in range(k) for j in range(k))
        np.testing.assert_allclose(run(func, [x, w, b], (1, oh, ow, c)),
                                   np.clip(want + b, 0, 6), rtol=1e-5, atol=1e-5)

    # with a prologue: the unpadded input before its bias and Clip(0, 6), padded inside
    x = rng.standard_normal((1, 6, 8, 16)).astype(np.float32)
    b_in = rng.standard_normal(16).astype(np.float32)
    ph = [te.placeholder(a.shape, "float32", name=n) for a, n in ((x, "x"), (w, "w"), (b, "b"),
                                                                  (b_in, "b_in"))]
    out = depthwise_nhwc_te(*ph[:3], (2, 2), (1, 1), (-np.inf, np.inf),
                            (ph[3], (0.0, 6.0), (2, 2, 2, 2)))
    func = schedule_depthwise_nhwc(te.create_prim_func([*ph, out]))
    act = np.pad(np.clip(x + b_in, 0, 6), ((0, 0), (2, 2), (2, 2), (0, 0)))
    want = sum(act[:, i:i + 5:2, j:j + 7:2] * w[i, j] for i in range(5) for j in range(5)) + b
    np.testing.assert_allclose(run(func, [x, w, b, b_in], (1, 3, 4, 16)), want, rtol=1e-5,
                               atol=1e-5)

    x = rng.standard_normal((2, 9, 7, 16)).astype(np.float32)
    data = te.placeholder(x.shape, "float32", name="x")
    out = max_pool_nhwc_te(data, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1))
    func = schedule_depthwise_nhwc(te.create_prim_func([data, out]), "max_pool_nhwc")
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    want = np.max([padded[:, i:i + 9:2, j:j + 7:2] for i in range(3) for j in range(3)], 0)
    np.testing.assert_array_equal(run(func, [x], (2, 5, 4, 16)), want)
