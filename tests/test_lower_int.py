"""Integer ONNX graphs (docs/integer-onnx.md) compiled for the host match a numpy oracle exactly.

Each graph is built by hand (opset 21 + edgert 1), checked with ``onnx.checker`` (full check),
compiled once per module through ``compile_model`` and run with ``edgert.Session`` at batch 1
and 3. The oracle is numpy plus the ops' ``reference`` functions.
"""

from __future__ import annotations

import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

import edgert
from edgert.compiler import compile_model
from edgert.errors import CompileError, UnsupportedOpError
from edgert.ops import DOMAIN, ilayernorm, intmatmul, requant, shiftgelu, shiftmax

from ophelpers import assert_bit_exact, integer_model

BATCHES = [1, 3]
BUILD_SECONDS: dict[str, float] = {}
I8, I16 = (-128, 127), (-32768, 32767)


# ---------------------------------------------------------------- numpy oracle pieces

def quantize(x: np.ndarray, scale: float, dtype: type) -> np.ndarray:
    """The contract's QuantizeLinear: float32 division, round half to even, saturate."""
    info = np.iinfo(dtype)
    return np.clip(np.rint(x / np.float32(scale)), info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: np.ndarray, axis: int = 1) -> np.ndarray:
    """float32(q) * scale (per channel along ``axis`` when ``scale`` is 1-D)."""
    scale = np.asarray(scale, np.float32)
    if scale.ndim == 1:
        shape = [1] * q.ndim
        shape[axis] = scale.size
        scale = scale.reshape(shape)
    return q.astype(np.float32) * scale


def conv_integer(x: np.ndarray, w: np.ndarray, *, strides=(1, 1), pads=(0, 0, 0, 0),
                 dilations=(1, 1), group: int = 1) -> np.ndarray:
    """Exact NCHW integer convolution (int64), as int32; pads = (top, left, bottom, right)."""
    x = np.pad(x.astype(np.int64), [(0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])])
    n, c, h, wd = x.shape
    o, ci, kh, kw = w.shape
    oh = (h - (kh - 1) * dilations[0] - 1) // strides[0] + 1
    ow = (wd - (kw - 1) * dilations[1] - 1) // strides[1] + 1
    out = np.zeros((n, o, oh, ow), np.int64)
    (sh, sw), (dh, dw), per = strides, dilations, o // group
    for oc in range(o):
        g = oc // per
        for i in range(kh):
            for j in range(kw):
                patch = x[:, g * ci:(g + 1) * ci,
                          i * dh: i * dh + sh * (oh - 1) + 1: sh,
                          j * dw: j * dw + sw * (ow - 1) + 1: sw]
                out[:, oc] += np.einsum("nchw,c->nhw", patch, w[oc, :, i, j].astype(np.int64))
    assert np.abs(out).max() < 2**31
    return out.astype(np.int32)


def ratio_for(acc: np.ndarray, target: float, axis: int | None = None) -> np.ndarray:
    """Requant ratio mapping max |acc| (per channel along ``axis``) to ``target``."""
    a = np.abs(acc.astype(np.float64))
    if axis is not None:
        a = np.moveaxis(a, axis, -1).reshape(-1, a.shape[axis])
    peak = a.max() if axis is None else a.max(axis=0)
    return target / np.maximum(peak, 1.0)


# ---------------------------------------------------------------- graph building

def make_model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    return integer_model(nodes, inputs, outputs,
                         [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])


def vi(name: str, elem: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def edgert_node(op: str, ins: list[str], out: str, **attrs) -> onnx.NodeProto:
    return helper.make_node(op, ins, [out], name=out, domain=DOMAIN, **attrs)


def node(op: str, ins: list[str], out: str, **attrs) -> onnx.NodeProto:
    return helper.make_node(op, ins, [out], name=out, **attrs)


def requant_node(ins: str, out: str, inits: dict, ratio, *, to: str, axis: int = -1):
    """A Requant node whose multiplier/shift initializers come from ``requant.params(ratio)``."""
    m, e = requant.params(ratio)
    inits[f"{out}_m"], inits[f"{out}_e"] = m, e
    lo, hi = {"int8": I8, "int16": I16, "int32": (-(2**31), 2**31 - 1)}[to]
    elem = {"int8": TP.INT8, "int16": TP.INT16, "int32": TP.INT32}[to]
    attrs = dict(to=elem, lo=lo, hi=hi, axis=axis)
    ref = lambda q: requant.reference(q, m, e, lo=lo, hi=hi, to=to, axis=axis)  # noqa: E731
    return edgert_node("Requant", [ins, f"{out}_m", f"{out}_e"], out, **attrs), ref


class Compiled:
    """A model compiled once through ``compile_model`` and opened as a Session."""

    def __init__(self, name: str, model: onnx.ModelProto, tmp) -> None:
        path = tmp / f"{name}.onnx"
        onnx.save(model, path)
        start = time.perf_counter()
        self.artifact = compile_model(path, tmp / f"{name}.edgert")
        BUILD_SECONDS[name] = time.perf_counter() - start
        self.session = edgert.Session(self.artifact)
        self.output_names = [o.name for o in model.graph.output]

    def run(self, **feed: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(None, feed)))


def check_outputs(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for name, value in want.items():
        assert_bit_exact(name, got[name], value)


# ---------------------------------------------------------------- graph 1: boundary ops

BOUNDARY_SCALES = {"tie": np.float32(0.5), "fine": np.float32(0.1)}


def boundary_model():
    """x float32 [b, 8] -> QuantizeLinear int8/int16 at two scales -> DequantizeLinear."""
    inits = {"s_tie": BOUNDARY_SCALES["tie"], "s_fine": BOUNDARY_SCALES["fine"],
             "z8": np.int8(0), "z16": np.int16(0),
             "s_ch": np.linspace(0.01, 0.2, 8, dtype=np.float32)}
    nodes = [
        node("QuantizeLinear", ["x", "s_tie", "z8"], "q8_tie"),
        node("QuantizeLinear", ["x", "s_tie", "z16"], "q16_tie"),
        node("QuantizeLinear", ["x", "s_fine", "z8"], "q8_fine"),
        node("QuantizeLinear", ["x", "s_fine", "z16"], "q16_fine"),
        node("DequantizeLinear", ["q16_fine", "s_fine"], "dq16"),
        node("DequantizeLinear", ["q8_fine", "s_ch"], "dq8_ch", axis=1),
    ]
    outs = [vi(n, t, ["batch", 8]) for n, t in [("q8_tie", TP.INT8), ("q16_tie", TP.INT16),
                                                 ("q8_fine", TP.INT8), ("q16_fine", TP.INT16),
                                                 ("dq16", TP.FLOAT), ("dq8_ch", TP.FLOAT)]]

    def oracle(x):
        q16_fine = quantize(x, inits["s_fine"], np.int16)
        q8_fine = quantize(x, inits["s_fine"], np.int8)
        return {"q8_tie": quantize(x, inits["s_tie"], np.int8),
                "q16_tie": quantize(x, inits["s_tie"], np.int16),
                "q8_fine": q8_fine, "q16_fine": q16_fine,
                "dq16": dequantize(q16_fine, inits["s_fine"]),
                "dq8_ch": dequantize(q8_fine, inits["s_ch"], axis=1)}

    return make_model(nodes, [vi("x", TP.FLOAT, ["batch", 8])], outs, inits), oracle


def boundary_input(batch: int) -> np.ndarray:
    """Exact .5 ties at scale 0.5, values next to ties at scale 0.1, saturating values."""
    ties = np.float32([0.25, 0.75, 1.25, -1.25, -0.25, -0.75, 2.25, -2.25])   # x/0.5 = .5 ties
    k = np.arange(-40, 40)
    near = ((k + 0.5) * np.float64(0.1)).astype(np.float32)                    # near x/0.1 ties
    near = np.concatenate([near, np.nextafter(near, np.float32(np.inf)),
                           np.nextafter(near, np.float32(-np.inf))])
    sat = np.float32([1e9, -1e9, 63.75, -64.25, 3276.75, -3276.85, np.inf, -np.inf])
    values = np.concatenate([ties, near, sat])
    rng = np.random.default_rng(batch)
    out = rng.choice(values, size=(batch, 8))
    out[0] = ties if batch == 1 else out[0]
    return out.astype(np.float32)


# ---------------------------------------------------------------- graph 2: transformer-like chain

S, K, N1, N2 = 4, 16, 12, 8


def chain_model():
    """Quantize -> MatMulInteger -> Add bias -> Requant per channel -> ILayerNorm(bias) ->
    Requant int16 (scalar constants) -> ShiftGELU -> Requant int16 -> IntMatMul(int16 x int8) ->
    Requant int8 -> Shiftmax -> shape ops with a dynamic batch -> DequantizeLinear."""
    rng = np.random.default_rng(7)
    s_x = np.float32(0.05)
    w1 = rng.integers(-127, 128, (K, N1), dtype=np.int8)
    b1 = rng.integers(-3000, 3000, N1, dtype=np.int32)
    w2 = rng.integers(-127, 128, (N1, N2), dtype=np.int8)
    ln_bias = rng.integers(-(2**27), 2**27, N1, dtype=np.int32)
    inits = {"s_x": s_x, "z8": np.int8(0), "w1": w1, "b1": b1, "w2": w2, "ln_bias": ln_bias,
             "cls": np.full((1, 1), 1234, np.int16), "minus1": np.int64([-1]),
             "one": np.int64([1]), "idx": np.int64([0, 2, 5]), "zero": np.int64([0]),
             "s_out": np.float32(2.0**-15), "s_acc": np.linspace(1e-4, 1e-3, N1, dtype=np.float32)}
    calib = np.random.default_rng(0).standard_normal((64, S, K)).astype(np.float32)
    gelu = shiftgelu.params(2.0**-13)
    smax = shiftmax.params(0.1, N2, k=16)

    # Requant constants picked from calibration data, as the quantizer would.
    acc = (intmatmul.reference(quantize(calib, s_x, np.int8), w1) + b1).astype(np.int32)
    rq1, ref1 = requant_node("acc", "r1", inits, ratio_for(acc, 100.0, axis=-1), to="int8")
    ln = ilayernorm.reference(ref1(acc), ln_bias)
    rq2, ref2 = requant_node("ln", "r2", inits, 2.0**-16, to="int16")
    inits["r2_m"], inits["r2_e"] = inits["r2_m"].reshape(()), inits["r2_e"].reshape(())  # scalars
    g = shiftgelu.reference(ref2(ln), **gelu)
    rq3, ref3 = requant_node("g", "r3", inits, 2.0**-7, to="int16")
    im = intmatmul.reference(ref3(g), w2)
    rq4, ref4 = requant_node("im", "r4", inits, ratio_for(im, 60.0), to="int8")

    nodes = [
        node("QuantizeLinear", ["x", "s_x", "z8"], "xq"),
        node("MatMulInteger", ["xq", "w1"], "mm"),
        node("Add", ["mm", "b1"], "acc"),
        rq1,
        edgert_node("ILayerNorm", ["r1", "ln_bias"], "ln"),
        rq2,
        edgert_node("ShiftGELU", ["r2"], "g", **gelu),
        rq3,
        edgert_node("IntMatMul", ["r3", "w2"], "im"),
        rq4,
        edgert_node("Shiftmax", ["r4"], "sm", **smax),
        # shape ops on int16 data; the batch comes from Shape(x)
        node("Transpose", ["sm"], "t", perm=[0, 2, 1]),                       # [b, 8, 4]
        node("Unsqueeze", ["t", "one"], "u"),                                  # [b, 1, 8, 4]
        node("Squeeze", ["u", "one"], "sq"),                                   # [b, 8, 4]
        node("Slice", ["sq", "one", "minus1_end", "two"], "sl"),               # [b, 8, 3]
        node("Gather", ["sl", "idx"], "ga", axis=1),                          # [b, 3, 3]
        node("Shape", ["x"], "shape_x"),
        node("Gather", ["shape_x", "zero"], "batch_dim", axis=0),             # [1] int64
        node("Concat", ["batch_dim", "minus1"], "flat_shape", axis=0),
        node("Reshape", ["ga", "flat_shape"], "rs"),                          # [b, 9]
        node("Concat", ["batch_dim", "one"], "cls_shape", axis=0),
        node("Expand", ["cls", "cls_shape"], "cls_b"),                         # [b, 1]
        node("Concat", ["cls_b", "rs"], "cat", axis=1),                        # [b, 10]
        node("Flatten", ["cat"], "flat", axis=1),
        node("Identity", ["flat"], "ints"),
        node("DequantizeLinear", ["ints", "s_out"], "y"),
        node("DequantizeLinear", ["acc", "s_acc"], "y_acc", axis=2),
    ]
    inits.update({"minus1_end": np.int64([4]), "two": np.int64([2])})
    outs = [vi("y", TP.FLOAT, ["batch", 10]), vi("ints", TP.INT16, ["batch", 10]),
            vi("y_acc", TP.FLOAT, ["batch", S, N1]), vi("sm", TP.INT16, ["batch", S, N2])]

    def oracle(x):
        acc = (intmatmul.reference(quantize(x, s_x, np.int8), w1) + b1).astype(np.int32)
        g = shiftgelu.reference(ref2(ilayernorm.reference(ref1(acc), ln_bias)), **gelu)
        sm = shiftmax.reference(ref4(intmatmul.reference(ref3(g), w2)), **smax)
        ga = np.take(np.swapaxes(sm, 1, 2)[:, :, 1:4], [0, 2, 5], axis=1)
        ints = np.concatenate([np.broadcast_to(inits["cls"], (x.shape[0], 1)),
                               ga.reshape(x.shape[0], -1)], axis=1)
        return {"y": dequantize(ints, inits["s_out"]), "ints": ints,
                "y_acc": dequantize(acc, inits["s_acc"], axis=2), "sm": sm}

    return make_model(nodes, [vi("x", TP.FLOAT, ["batch", S, K])], outs, inits), oracle


# ---------------------------------------------------------------- graph 3: convolutions

def conv_model():
    """Quantize -> ConvInteger (stride 2, pads 1) -> Add bias -> Requant per channel (axis 1) ->
    ConvInteger (group 2, dilation 2, asymmetric pads) -> DequantizeLinear per channel."""
    rng = np.random.default_rng(3)
    s_x = np.float32(0.04)
    wc1 = rng.integers(-127, 128, (4, 3, 3, 3), dtype=np.int8)
    bc1 = rng.integers(-2000, 2000, (4, 1, 1), dtype=np.int32)
    wc2 = rng.integers(-127, 128, (6, 2, 2, 2), dtype=np.int8)
    inits = {"s_x": s_x, "z8": np.int8(0), "wc1": wc1, "bc1": bc1, "wc2": wc2,
             "s_c": np.linspace(1e-3, 6e-3, 6, dtype=np.float32)}
    conv1 = dict(strides=(2, 2), pads=(1, 1, 1, 1))
    conv2 = dict(pads=(0, 1, 1, 0), dilations=(2, 2), group=2)
    calib = np.random.default_rng(1).standard_normal((16, 3, 9, 9)).astype(np.float32)
    a1 = conv_integer(quantize(calib, s_x, np.int8), wc1, **conv1) + bc1
    rq, ref = requant_node("a1", "r", inits, ratio_for(a1, 100.0, axis=1), to="int8", axis=1)
    nodes = [
        node("QuantizeLinear", ["x", "s_x", "z8"], "xq"),
        node("ConvInteger", ["xq", "wc1"], "c1", kernel_shape=[3, 3], **conv1),
        node("Add", ["c1", "bc1"], "a1"),
        rq,
        node("ConvInteger", ["r", "wc2"], "c2", kernel_shape=[2, 2], **conv2),
        node("DequantizeLinear", ["c2", "s_c"], "y", axis=1),
    ]
    outs = [vi("y", TP.FLOAT, ["batch", 6, 4, 4]), vi("c1", TP.INT32, ["batch", 4, 5, 5])]

    def oracle(x):
        c1 = conv_integer(quantize(x, s_x, np.int8), wc1, **conv1)
        c2 = conv_integer(ref(c1 + bc1), wc2, **conv2)
        return {"y": dequantize(c2, inits["s_c"], axis=1), "c1": c1}

    return make_model(nodes, [vi("x", TP.FLOAT, ["batch", 3, 9, 9])], outs, inits), oracle


# ---------------------------------------------------------------- graph 4: each edgert op alone

def single_ops_model():
    """Every edgert op applied to a graph input by itself (independent nodes, one build)."""
    rng = np.random.default_rng(11)
    m_ch, e_ch = requant.params(rng.uniform(1e-4, 3e-3, 6))
    bias = rng.integers(-(2**28), 2**28, 6, dtype=np.int32)
    w = rng.integers(-127, 128, (6, 5), dtype=np.int8)
    gelu, smax = shiftgelu.params(0.05), shiftmax.params(0.05, 6, k=8)
    inits = {"m_ch": m_ch, "e_ch": e_ch, "bias": bias, "w": w}
    nodes = [
        edgert_node("Requant", ["acc", "m_ch", "e_ch"], "requant", to=TP.INT8, lo=-100, hi=127,
                    axis=-1),
        edgert_node("ILayerNorm", ["a16", "bias"], "ilayernorm"),
        edgert_node("ILayerNorm", ["acc"], "ilayernorm_nobias"),
        edgert_node("ShiftGELU", ["a8"], "shiftgelu", **gelu),
        edgert_node("Shiftmax", ["a8"], "shiftmax", **smax),
        edgert_node("IntMatMul", ["a16", "w"], "intmatmul"),
    ]
    ins = [vi("acc", TP.INT32, ["batch", 4, 6]), vi("a8", TP.INT8, ["batch", 4, 6]),
           vi("a16", TP.INT16, ["batch", 4, 6])]
    outs = [vi("requant", TP.INT8, ["batch", 4, 6]), vi("ilayernorm", TP.INT32, ["batch", 4, 6]),
            vi("ilayernorm_nobias", TP.INT32, ["batch", 4, 6]),
            vi("shiftgelu", TP.INT32, ["batch", 4, 6]), vi("shiftmax", TP.INT8, ["batch", 4, 6]),
            vi("intmatmul", TP.INT32, ["batch", 4, 5])]

    def oracle(acc, a8, a16):
        return {"requant": requant.reference(acc, m_ch, e_ch, lo=-100, hi=127, to="int8"),
                "ilayernorm": ilayernorm.reference(a16, bias),
                "ilayernorm_nobias": ilayernorm.reference(acc),
                "shiftgelu": shiftgelu.reference(a8, **gelu),
                "shiftmax": shiftmax.reference(a8, **smax),
                "intmatmul": intmatmul.reference(a16, w)}

    return make_model(nodes, ins, outs, inits), oracle


def single_ops_inputs(batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(100 + batch)
    return {"acc": rng.integers(-(2**20), 2**20, (batch, 4, 6), dtype=np.int32),
            "a8": rng.integers(-128, 128, (batch, 4, 6), dtype=np.int8),
            "a16": rng.integers(-32768, 32768, (batch, 4, 6), dtype=np.int16)}


# ---------------------------------------------------------------- fixtures and tests

@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("int")
    out = {}
    for name, make in [("boundary", boundary_model), ("chain", chain_model), ("conv", conv_model),
                       ("single_ops", single_ops_model)]:
        model, oracle = make()
        out[name] = (Compiled(name, model, tmp), oracle)
    yield out
    print("\nbuild seconds:", {k: round(v, 2) for k, v in BUILD_SECONDS.items()})


@pytest.mark.parametrize("batch", BATCHES)
def test_boundary_ops_round_half_even_and_saturate(compiled, batch):
    c, oracle = compiled["boundary"]
    x = boundary_input(batch)
    got = c.run(x=x)
    check_outputs(got, oracle(x))
    if batch == 1:   # 0.5, 1.5, 2.5, -2.5, -0.5, -1.5, 4.5, -4.5 -> even neighbours
        np.testing.assert_array_equal(got["q8_tie"][0], [0, 2, 2, -2, 0, -2, 4, -4])


@pytest.mark.parametrize("batch", BATCHES)
def test_chain_matches_oracle(compiled, batch):
    c, oracle = compiled["chain"]
    x = np.random.default_rng(batch).standard_normal((batch, S, K)).astype(np.float32)
    want = oracle(x)
    check_outputs(c.run(x=x), want)
    assert len(np.unique(want["ints"])) > 5   # not a degenerate (saturated / constant) case


@pytest.mark.parametrize("batch", BATCHES)
def test_conv_matches_oracle(compiled, batch):
    c, oracle = compiled["conv"]
    x = np.random.default_rng(batch).standard_normal((batch, 3, 9, 9)).astype(np.float32)
    check_outputs(c.run(x=x), oracle(x))


@pytest.mark.parametrize("batch", BATCHES)
def test_each_edgert_op_alone(compiled, batch):
    c, oracle = compiled["single_ops"]
    feed = single_ops_inputs(batch)
    check_outputs(c.run(**feed), oracle(**feed))


def test_integer_ops_keep_integer_dtypes():
    """TVM's converters for the shape ops and Add leave the integer dtypes alone: in the chain's
    Relax module no ``astype`` appears and only the two DequantizeLinear calls produce floats."""
    import tvm

    from edgert.compiler.lower import to_relax

    model, _ = chain_model()
    main = to_relax(model)["main"]
    call_tir = tvm.ir.Op.get("relax.call_tir")
    ops, float_producers = set(), []
    for block in main.body.blocks:
        for binding in block.bindings:
            value = binding.value
            if not isinstance(getattr(value, "op", None), tvm.ir.Op):
                continue
            name = value.args[0].name_hint if value.op.same_as(call_tir) else value.op.name
            ops.add(name)
            if "float" in str(getattr(binding.var.ty, "dtype", "")):
                float_producers.append(name)
    assert "relax.astype" not in ops
    assert sorted(float_producers) == ["dequantize_linear", "dequantize_linear1"], float_producers
    assert {"relax.permute_dims", "relax.strided_slice", "relax.take", "relax.concat",
            "relax.broadcast_to", "relax.reshape", "relax.add"} <= ops


def test_supported_ops_include_integer_ops():
    from edgert.compiler.lower import supported_ops

    ops = supported_ops()
    for op in ("Requant", "Shiftmax", "ShiftGELU", "ILayerNorm", "IntMatMul"):
        assert (DOMAIN, op) in ops and ("", op) not in ops
    for op in ("ConvInteger", "MatMulInteger", "QuantizeLinear", "DequantizeLinear"):
        assert ("", op) in ops


def test_edgert_op_outside_its_domain_is_unsupported(tmp_path):
    m, e = requant.params(0.5)
    graph = helper.make_graph(
        [helper.make_node("Requant", ["q", "m", "e"], ["y"], name="rq", domain="com.other",
                          to=TP.INT8, lo=-128, hi=127, axis=-1)],
        "g", [vi("q", TP.INT32, [2])], [vi("y", TP.INT8, [2])],
        [numpy_helper.from_array(m, "m"), numpy_helper.from_array(e, "e")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid("com.other", 1)])
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(UnsupportedOpError, match="com.other.Requant"):
        compile_model(tmp_path / "m.onnx", tmp_path / "m.edgert")


def test_matmul_integer_zero_point_refused():
    from edgert.compiler.lower import to_relax

    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b", "za"], ["y"], name="mmi")],
        "g", [vi("a", TP.INT8, [2, 3])], [vi("y", TP.INT32, [2, 4])],
        [numpy_helper.from_array(np.ones((3, 4), np.int8), "b"),
         numpy_helper.from_array(np.int8(3), "za")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    with pytest.raises(CompileError, match="MatMulInteger mmi: zero points are not supported"):
        to_relax(model)


def test_converters_are_scoped_to_the_import():
    """TVM's own table is restored after each import (no global patching left behind)."""
    from tvm.relax.frontend.onnx import onnx_frontend

    from edgert.compiler.lower_int import integer_converters

    before = onnx_frontend._get_convert_map
    with integer_converters():
        assert "ConvInteger" in onnx_frontend._get_convert_map()
    assert onnx_frontend._get_convert_map is before
    assert "ConvInteger" not in onnx_frontend._get_convert_map()
