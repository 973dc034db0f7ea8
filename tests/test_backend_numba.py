"""The numba backend runs integer ONNX graphs bit for bit like the numpy reference executor.

Graphs are built by hand with onnx.helper (opset 21 + edgert 1) and checked with
``onnx.checker`` (full check); every output of the numba interpreter must equal the output of
``run_reference`` (``onnx.reference`` + the ops' ``reference`` functions): same dtype, same shape,
same bits, at batch 1 and 3, on random inputs and on edge cases.
"""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

import edgert
from edgert.artifact import MODEL_MEMBER, read_artifact, write_artifact
from edgert.backends import BACKENDS, load_backend
from edgert.backends.numba_backend import Plan, supported_ops
from edgert.backends.reference import run_reference
from edgert.errors import ModelError, UnsupportedOpError
from edgert.onnx_graph import graph_inputs, value_info_json
from edgert.ops import DOMAIN, ilayernorm, requant, shiftgelu, shiftmax
from edgert.targets import TARGETS

from conftest import run_cli
from ophelpers import assert_bit_exact, integer_model

SX = 2.0**-5        # int8 input scale: a power of two, so (k + 0.5) * SX / SX is an exact tie
S16 = 2.0**-12      # int16 input scale
T, K, H, V = 4, 8, 16, 8


# --- graph building ------------------------------------------------------------------------------

class _G:
    """Collects nodes and initializers; ``c(name, array)`` adds an initializer, returns its name."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def c(self, name: str, value) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def n(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        domain = DOMAIN if op in ("Requant", "Shiftmax", "ShiftGELU", "ILayerNorm", "IntMatMul") else ""
        self.nodes.append(helper.make_node(op, inputs, [output], name=f"{op.lower()}_{output}",
                                           domain=domain, **attrs))
        return output

    def requant(self, x: str, ratio, out: str, to: int, axis: int = -1) -> str:
        m, e = requant.params(np.asarray(ratio, np.float64))
        lo, hi = {TP.INT8: (-128, 127), TP.INT16: (-32768, 32767)}[to]
        mult, shift = self.c(f"{out}_m", m.reshape(-1)), self.c(f"{out}_e", e.reshape(-1))
        return self.n("Requant", [x, mult, shift], out, to=to, lo=lo, hi=hi, axis=axis)

    def model(self, inputs, outputs) -> onnx.ModelProto:
        return integer_model(self.nodes, inputs, outputs, self.inits)


def _vi(name: str, elem: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def pipeline_model() -> onnx.ModelProto:
    """Quantize -> MatMulInteger -> Add -> Requant (per channel) -> ILayerNorm -> Requant int16 ->
    ShiftGELU -> Requant -> IntMatMul (int16 x int8) -> Requant -> Shiftmax -> Dequantize, shape
    ops on a dynamic batch, and a ConvInteger branch (stride 2, pads, groups) dequantized per
    channel."""
    rng = np.random.default_rng(1)
    g = _G()
    q8 = g.n("QuantizeLinear", ["x", g.c("sx", np.float32(SX)), g.c("zx", np.int8(0))], "q8")
    q16 = g.n("QuantizeLinear", ["x", g.c("s16", np.float32(S16)), g.c("z16", np.int16(0))], "q16")
    w1 = rng.integers(-127, 128, (K, H), dtype=np.int8)
    acc = g.n("MatMulInteger", [q8, g.c("w1", w1)], "acc")
    accb = g.n("Add", [acc, g.c("bias1", rng.integers(-4000, 4000, H, dtype=np.int32))], "accb")
    h8 = g.requant(accb, rng.uniform(1 / 600, 1 / 150, H), "h8", TP.INT8)
    ln = g.n("ILayerNorm", [h8, g.c("lnb", ilayernorm.fold_beta(rng.uniform(-0.3, 0.3, H),
                                                                 rng.uniform(0.5, 1.5, H), H))], "ln")
    s_h = 4 / 32767
    h16 = g.requant(ln, 0.9 * ilayernorm.output_scale(H) / s_h, "h16", TP.INT16)
    gelu = g.n("ShiftGELU", [h16], "gelu", **shiftgelu.params(s_h))
    g16 = g.requant(gelu, 1 / 128, "g16", TP.INT16)
    w2 = rng.integers(-127, 128, (H, V), dtype=np.int8)
    a2 = g.n("IntMatMul", [g16, g.c("w2", w2)], "a2")
    s_l = 8 / 32767
    logits = g.requant(a2, 1 / 150, "logits", TP.INT16)
    p = g.n("Shiftmax", [logits], "p", **shiftmax.params(s_l, V, k=16))
    prob = g.n("DequantizeLinear", [p, g.c("sp", np.float32(2.0**-15))], "prob")
    w3 = rng.integers(-127, 128, (K, 5), dtype=np.int8)
    i16mm = g.n("IntMatMul", [q16, g.c("w3", w3)], "i16mm")
    # shape ops on the dynamic batch
    shp = g.n("Shape", [p], "shp")
    bdim = g.n("Gather", [shp, g.c("zero", np.int64(0))], "bdim")
    b1 = g.n("Unsqueeze", [bdim, g.c("ax0", np.array([0], np.int64))], "b1")
    flat = g.n("Reshape", [p, g.n("Concat", [b1, g.c("m1", np.array([-1], np.int64))], "fs", axis=0)],
               "flat")
    back = g.n("Reshape", [flat, g.c("s0", np.array([0, T, -1], np.int64))], "back")
    tr = g.n("Transpose", [back], "tr", perm=[0, 2, 1])
    sl = g.n("Slice", [tr, g.c("st", np.array([-1, 0], np.int64)),
                       g.c("en", np.array([-1000, 4], np.int64)), g.c("axs", np.array([1, -1], np.int64)),
                       g.c("sp2", np.array([-2, 2], np.int64))], "sl")
    ga = g.n("Gather", [sl, g.c("gi", np.array([-1, 0, 2], np.int64))], "ga", axis=1)
    us = g.n("Unsqueeze", [ga, g.c("ax_m1", np.array([-1], np.int64))], "us")
    sq = g.n("Squeeze", [us, g.c("ax_m1b", np.array([-1], np.int64))], "sq")
    u1 = g.n("Unsqueeze", [sq, g.c("ax1", np.array([1], np.int64))], "u1")
    ex = g.n("Expand", [u1, g.c("exs", np.array([1, 2, 1, 1], np.int64))], "ex")
    fl = g.n("Flatten", [ex], "fl", axis=-2)
    flat_t = g.n("Transpose", [flat], "flat_t", perm=[1, 0])
    sl2 = g.n("Slice", [flat_t, g.c("st2", np.array([3], np.int64)),
                        g.c("en2", np.array([-3], np.int64))], "sl2")         # axes omitted
    shp32 = g.n("Cast", [g.n("Identity", [shp], "shp_id")], "shp32", to=TP.INT32)
    # ConvInteger branch on an image input
    qi = g.n("QuantizeLinear", ["img", g.c("si", np.float32(SX)), g.c("zi", np.int8(0))], "qi")
    c1 = g.n("ConvInteger", [qi, g.c("wc1", rng.integers(-127, 128, (4, 3, 3, 3), dtype=np.int8))],
             "c1", strides=[2, 2])
    c2 = g.n("ConvInteger", [qi, g.c("wc2", rng.integers(-127, 128, (5, 3, 3, 3), dtype=np.int8))],
             "c2", pads=[1, 1, 1, 1])
    c3 = g.n("ConvInteger", [qi, g.c("wc3", rng.integers(-127, 128, (6, 1, 3, 2), dtype=np.int8))],
             "c3", group=3, pads=[0, 1, 2, 1], strides=[2, 1], dilations=[2, 1])
    dq1 = g.n("DequantizeLinear", [c1, g.c("sc1", rng.uniform(1e-4, 1e-3, 4).astype(np.float32))],
              "dq1", axis=1)
    dq2 = g.n("DequantizeLinear", [c2, g.c("sc2", np.float32(3e-4))], "dq2")
    dq3 = g.n("DequantizeLinear", [c3, g.c("sc3", rng.uniform(1e-4, 1e-3, 6).astype(np.float32))],
              "dq3", axis=-3)
    outs = [
        _vi(q8, TP.INT8, ["batch", T, K]), _vi(q16, TP.INT16, ["batch", T, K]),
        _vi(accb, TP.INT32, ["batch", T, H]), _vi(h8, TP.INT8, ["batch", T, H]),
        _vi(ln, TP.INT32, ["batch", T, H]), _vi(h16, TP.INT16, ["batch", T, H]),
        _vi(gelu, TP.INT32, ["batch", T, H]), _vi(a2, TP.INT32, ["batch", T, V]),
        _vi(p, TP.INT16, ["batch", T, V]), _vi(prob, TP.FLOAT, ["batch", T, V]),
        _vi(i16mm, TP.INT32, ["batch", T, 5]), _vi(fl, TP.INT16, ["rows", 6]),
        _vi(sl2, TP.INT16, [T * V - 6, "batch"]),
        _vi(shp32, TP.INT32, [3]), _vi(dq1, TP.FLOAT, ["batch", 4, 4, 4]),
        _vi(dq2, TP.FLOAT, ["batch", 5, 9, 9]), _vi(dq3, TP.FLOAT, ["batch", 6, 4, 10]),
    ]
    return g.model([_vi("x", TP.FLOAT, ["batch", T, K]), _vi("img", TP.FLOAT, ["batch", 3, 9, 9])],
                   outs)


def int_ops_model() -> onnx.ModelProto:
    """Every edgert op on integer graph inputs (``--io int8`` style), so edge cases reach each op
    directly: int8 ``a``, int16 ``b``, int32 ``acc``, all [batch, T, H]."""
    rng = np.random.default_rng(2)
    g = _G()
    r8 = g.requant("acc", rng.uniform(2e-7, 2e-6, H), "r8", TP.INT8)
    r16 = g.requant("acc", 2.0**-12, "r16", TP.INT16)
    rch = g.requant("acc", rng.uniform(2e-7, 2e-6, T), "rch", TP.INT8, axis=1)
    ln8 = g.n("ILayerNorm", ["a"], "ln8")
    ln32 = g.n("ILayerNorm", ["acc", g.c("lnb", rng.integers(-2**30, 2**30, H, dtype=np.int32))], "ln32")
    ge8 = g.n("ShiftGELU", ["a"], "ge8", **shiftgelu.params(4 / 127))
    ge16 = g.n("ShiftGELU", ["b"], "ge16", **shiftgelu.params(8 / 32767))
    sm8 = g.n("Shiftmax", ["a"], "sm8", **shiftmax.params(8 / 127, H, k=8))
    sm16 = g.n("Shiftmax", ["b"], "sm16", **shiftmax.params(8 / 32767, H, k=16))
    mm = g.n("IntMatMul", ["b", g.c("w16", rng.integers(-200, 200, (H, 3), dtype=np.int16))], "mm")
    mm8 = g.n("MatMulInteger", ["a", g.c("w8", rng.integers(-128, 128, (H, 2), dtype=np.int8))], "mm8")
    dq = g.n("DequantizeLinear", ["b", g.c("sb", rng.uniform(1e-3, 1e-2, H).astype(np.float32))], "dq",
             axis=-1)
    shape = ["batch", T, H]
    outs = [_vi(r8, TP.INT8, shape), _vi(r16, TP.INT16, shape), _vi(rch, TP.INT8, shape),
            _vi(ln8, TP.INT32, shape), _vi(ln32, TP.INT32, shape), _vi(ge8, TP.INT32, shape),
            _vi(ge16, TP.INT32, shape), _vi(sm8, TP.INT8, shape), _vi(sm16, TP.INT16, shape),
            _vi(mm, TP.INT32, ["batch", T, 3]), _vi(mm8, TP.INT32, ["batch", T, 2]),
            _vi(dq, TP.FLOAT, shape)]
    return g.model([_vi("a", TP.INT8, shape), _vi("b", TP.INT16, shape), _vi("acc", TP.INT32, shape)],
                   outs)


# --- inputs ------------------------------------------------------------------------------------------

def pipeline_inputs(batch: int, kind: str, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, T, K)).astype(np.float32)
    img = rng.standard_normal((batch, 3, 9, 9)).astype(np.float32)
    if kind == "edge":
        ties = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -127.5], np.float32)
        x[0, 0] = ties * np.float32(SX)                       # int8 ties
        x[0, 1] = ties * np.float32(S16)                      # int16 ties
        x[0, 2] = np.array([127.5, -128.5, 200, -200, 1e3, -1e3, 4.0, -4.0], np.float32) * SX
        x[-1, 3] = 0.75                                       # an all-equal row
        x[-1, 1] = np.array([32767.5, -32768.5, 40000, -40000, 32766.5, 0, 1, -1]) * S16
        img[0, 0] = 100.0                                     # saturated image plane
        img[-1, 1] = -0.25                                    # constant plane
    return {"x": x, "img": img}


def int_ops_inputs(batch: int, kind: str, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(-128, 128, (batch, T, H), dtype=np.int8)
    b = rng.integers(-32768, 32768, (batch, T, H), dtype=np.int16)
    acc = rng.integers(-2**27, 2**27, (batch, T, H), dtype=np.int32)
    if kind == "edge":
        a[0, 0], b[0, 0], acc[0, 0] = 127, 32767, 2**27            # all-equal, saturated rows
        a[0, 1], b[0, 1], acc[0, 1] = -128, -32768, -2**27
        a[-1, 2], b[-1, 2], acc[-1, 2] = 5, -7, 12345               # all-equal rows
        a[-1, 3, :] = -128                                          # one dominant element
        a[-1, 3, 5] = 127
        b[-1, 3, :] = -32768
        b[-1, 3, 9] = 32767
        acc[-1, 3, ::2], acc[-1, 3, 1::2] = 2**27 - 1, -2**27        # extreme spread
    return {"a": a, "b": b, "acc": acc}


@pytest.fixture(scope="module")
def pipeline() -> onnx.ModelProto:
    return pipeline_model()


@pytest.fixture(scope="module")
def int_ops() -> onnx.ModelProto:
    return int_ops_model()


def _assert_same(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    plan = Plan(model)
    got = plan.run([feeds[n] for n in plan.input_names])
    want = run_reference(model, feeds)
    assert len(got) == len(want) == len(model.graph.output)
    for out, g, w in zip(model.graph.output, got, want):
        assert_bit_exact(out.name, g, w)
    return got


# --- bit-exactness ---------------------------------------------------------------------------------

@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("kind", ["random", "edge"])
def test_pipeline_matches_reference(pipeline, batch, kind):
    got = dict(zip([o.name for o in pipeline.graph.output],
                   _assert_same(pipeline, pipeline_inputs(batch, kind, seed=batch))))
    assert got["sl2"].shape == (T * V - 6, batch)      # axes omitted: axis 0
    assert got["fl"].shape == (batch * 2, 6) and got["shp32"].tolist() == [batch, T, V]
    assert got["dq3"].shape == (batch, 6, 4, 10)
    assert len(np.unique(got["h8"])) > 20 and len(np.unique(got["p"])) > 20   # not degenerate


def test_quantize_ties_and_saturation(pipeline):
    got = dict(zip([o.name for o in pipeline.graph.output],
                   _assert_same(pipeline, pipeline_inputs(3, "edge", seed=3))))
    np.testing.assert_array_equal(got["q8"][0, 0], [0, 2, 2, 0, -2, -2, 126, -128])
    np.testing.assert_array_equal(got["q16"][0, 1], [0, 2, 2, 0, -2, -2, 126, -128])
    np.testing.assert_array_equal(got["q8"][0, 2], [127, -128, 127, -128, 127, -128, 4, -4])
    np.testing.assert_array_equal(got["q16"][-1, 1], [32767, -32768, 32767, -32768, 32766, 0, 1, -1])
    assert (got["q8"][-1, 3] == 24).all()                             # 0.75 / 2**-5


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("kind", ["random", "edge"])
def test_edgert_ops_on_integer_inputs(int_ops, batch, kind):
    _assert_same(int_ops, int_ops_inputs(batch, kind, seed=10 + batch))


def test_quantize_saturates_beyond_int32():
    """The contract saturates any quotient; ``onnx.reference`` casts to int32 first, so its
    answer for |x / scale| >= 2**31 or +-inf is the CPU's (INT32_MIN on x86-64): compare with the
    contract, not with the reference."""
    g = _G()
    g.n("QuantizeLinear", ["x", g.c("s", np.float32(SX)), g.c("z", np.int8(0))], "q")
    g.n("QuantizeLinear", ["x", g.c("s16", np.float32(S16)), g.c("z16", np.int16(0))], "q16")
    model = g.model([_vi("x", TP.FLOAT, [6])], [_vi("q", TP.INT8, [6]), _vi("q16", TP.INT16, [6])])
    x = np.array([1e10, -1e10, np.inf, -np.inf, 3e38, -0.0], np.float32)
    q, q16 = Plan(model).run([x])
    np.testing.assert_array_equal(q, [127, -128, 127, -128, 127, 0])
    np.testing.assert_array_equal(q16, [32767, -32768, 32767, -32768, 32767, 0])


# --- shape ops: ONNX semantics, checked against onnxruntime too ---------------------------------------

def shape_ops_model() -> onnx.ModelProto:
    g = _G()
    i64 = lambda v: np.array(v, np.int64)  # noqa: E731
    g.n("Slice", ["x", g.c("a0", i64([-100, 5])), g.c("a1", i64([-2**63, -2**63])),
                  g.c("a2", i64([0, 2])), g.c("a3", i64([-1, -3]))], "rev")      # start < -dim, step < 0
    g.n("Slice", ["x", g.c("b0", i64([1])), g.c("b1", i64([2**62]))], "tail")     # axes/steps omitted
    g.n("Slice", ["x", g.c("c0", i64([2])), g.c("c1", i64([-1])), g.c("c2", i64([-2]))], "mid")  # axis -2
    g.n("Squeeze", ["x1"], "sqall")                                                # no axes: every 1
    g.n("Reshape", ["e", g.c("z0", i64([0, 3]))], "rz", allowzero=1)               # a real 0
    g.n("Reshape", ["x", g.c("z1", i64([-1, 0]))], "rneg")
    g.n("Gather", ["x", g.c("gi", i64([[-1, 0], [1, -4]]))], "gat", axis=-1)
    g.n("Expand", ["x1", g.c("es", i64([3, 1, 2, 1, 5]))], "exp")
    g.n("Flatten", ["x"], "fl0", axis=0)
    g.n("Shape", ["x"], "shp", start=-2, end=100)
    g.n("Concat", ["x", "x"], "cat", axis=-3)
    g.n("Add", ["acc", g.c("big", np.int32(2**31 - 1))], "wrap")                   # int32 wraps
    outs = [_vi(n, t, s) for n, t, s in [
        ("rev", TP.INT8, [1, 4, 2]), ("tail", TP.INT8, [2, 4, 6]), ("mid", TP.INT8, [3, 1, 6]),
        ("sqall", TP.INT8, [2]), ("rz", TP.INT16, [0, 3]), ("rneg", TP.INT8, [18, 4]),
        ("gat", TP.INT8, [3, 4, 2, 2]), ("exp", TP.INT8, [3, 1, 2, 2, 5]), ("fl0", TP.INT8, [1, 72]),
        ("shp", TP.INT64, [2]), ("cat", TP.INT8, [6, 4, 6]), ("wrap", TP.INT32, [4])]]
    return g.model([_vi("x", TP.INT8, [3, 4, 6]), _vi("x1", TP.INT8, [1, 2, 1]),
                    _vi("e", TP.INT16, [0, 5]), _vi("acc", TP.INT32, [4])], outs)


def test_shape_ops_follow_onnx():
    import onnxruntime as ort

    model = shape_ops_model()
    rng = np.random.default_rng(5)
    feeds = {"x": rng.integers(-128, 128, (3, 4, 6), dtype=np.int8),
             "x1": np.array([[[7], [-3]]], np.int8), "e": np.zeros((0, 5), np.int16),
             "acc": np.array([1, 2, -5, 0], np.int32)}
    plan = Plan(model)
    got = dict(zip(plan.output_names, plan.run([feeds[n] for n in plan.input_names])))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = dict(zip(plan.output_names, run_reference(model, feeds)))
    for name, want in zip(plan.output_names, sess.run(None, feeds)):
        assert_bit_exact(name, got[name], want)
        if name != "rev":
            assert_bit_exact(name, got[name], ref[name])
    x = feeds["x"]
    # ONNX clamps a negative-step start below -dim to 0 (Python slicing, and onnx.reference, give
    # nothing for axis 0 here).
    np.testing.assert_array_equal(got["rev"], x[0::-1, :, 5::-3])
    assert ref["rev"].shape[0] == 0


# --- artifact, Session, CLI ------------------------------------------------------------------------

def _write(model: onnx.ModelProto, path, target: str = "rpi5"):
    manifest = {
        "edgert_version": edgert.__version__,
        "target": TARGETS[target].to_json(),
        "inputs": [value_info_json(v) for v in graph_inputs(model)],
        "outputs": [value_info_json(v) for v in model.graph.output],
        "compile_options": {"target": target, "precision": "int8"},
    }
    return write_artifact(path, manifest, {MODEL_MEMBER: model.SerializeToString()})


@pytest.fixture(scope="module")
def pipeline_artifact(pipeline, tmp_path_factory):
    """A numba-only artifact (no library) for a target this machine may not even run."""
    return _write(pipeline, tmp_path_factory.mktemp("numba") / "pipeline.edgert")


def test_session_numba_backend(pipeline, pipeline_artifact):
    assert BACKENDS == ("tvm", "numba")
    sess = edgert.Session(pipeline_artifact, backend="numba")
    assert sess.backend == "numba"
    assert [i.name for i in sess.get_inputs()] == ["x", "img"]
    for batch in (1, 3):
        feeds = pipeline_inputs(batch, "edge", seed=batch)
        got = sess.run(None, feeds)
        for out, g, w in zip(sess.get_outputs(), got, run_reference(pipeline, feeds)):
            assert_bit_exact(out.name, g, w)
            assert g.flags.c_contiguous and g.flags.writeable
    [p] = sess.run(["p"], feeds)
    p[...] = 0                                      # outputs belong to the caller
    assert sess.run(["p"], feeds)[0].any()


def test_session_threads(pipeline, pipeline_artifact):
    import numba

    feeds = pipeline_inputs(2, "random")
    want = run_reference(pipeline, feeds)
    sess = edgert.Session(pipeline_artifact, backend="numba", threads=1)
    big = load_backend("numba", read_artifact(pipeline_artifact), threads=10_000)
    assert big.threads == numba.config.NUMBA_NUM_THREADS
    seen, errors = [], []

    def worker():
        try:
            for g, w in zip(sess.run(None, feeds), want):
                np.testing.assert_array_equal(g, w)
            seen.append(numba.get_num_threads())
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    workers = [threading.Thread(target=worker) for _ in range(3)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert not errors and seen == [1, 1, 1]
    with pytest.raises(edgert.InputError, match="threads must be >= 1"):
        edgert.Session(pipeline_artifact, backend="numba", threads=0)


def test_tvm_backend_refuses_what_numba_runs(pipeline_artifact, tmp_path, pipeline):
    with pytest.raises(edgert.EdgertError):                  # foreign target or no library
        edgert.Session(pipeline_artifact)
    host_art = _write(pipeline, tmp_path / "host.edgert", target="x86-avx2")
    with pytest.raises(edgert.EdgertError):
        edgert.Session(host_art, backend="tvm")


def test_numba_backend_does_not_import_tvm(pipeline_artifact, tmp_path):
    np.savez(tmp_path / "in.npz", **pipeline_inputs(2, "random"))
    code = (
        "import sys, numpy as np, edgert\n"
        "import edgert.backends.numba_backend\n"
        f"s = edgert.Session({str(pipeline_artifact)!r}, backend='numba')\n"
        f"f = np.load({str(tmp_path / 'in.npz')!r})\n"
        "s.run(None, {k: f[k] for k in f.files})\n"
        "assert not [m for m in sys.modules if m == 'tvm' or m.startswith('tvm.')], 'tvm imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr


def test_cli_run_numba(pipeline, pipeline_artifact, tmp_path):
    feeds = pipeline_inputs(3, "edge")
    np.savez(tmp_path / "in.npz", **feeds)
    out = run_cli("run", str(pipeline_artifact), "--backend", "numba",
                  "--input", str(tmp_path / "in.npz"), "-o", str(tmp_path / "out.npz"))
    assert out.returncode == 0, out.stderr
    assert "prob" in out.stdout and "int16" in out.stdout
    saved = np.load(tmp_path / "out.npz")
    for vi, want in zip(pipeline.graph.output, run_reference(pipeline, feeds)):
        assert_bit_exact(vi.name, saved[vi.name], want)
    np.save(tmp_path / "x.npy", feeds["x"])
    bad = run_cli("run", str(pipeline_artifact), "--backend", "fpga",
                  "--input", f"x={tmp_path / 'x.npy'}")
    assert bad.returncode == 2 and "fpga" in bad.stderr and "numba" in bad.stderr


# --- unsupported ops and malformed graphs ----------------------------------------------------------

def _unsupported_model() -> onnx.ModelProto:
    g = _G()
    g.n("Requant", ["acc", g.c("m", np.array([1 << 30], np.int64)), g.c("e", np.array([31], np.int64))],
        "q", to=TP.INT8, lo=-128, hi=127, axis=-1)
    g.nodes.append(helper.make_node("Relu", ["q"], ["r"], name="my_relu"))
    g.nodes.append(helper.make_node("QuantizeLinear", ["f", "s", "z"], ["qb"], name="blocked",
                                    axis=1, block_size=2))
    g.c("s", np.ones((2, 2), np.float32))
    g.c("z", np.zeros((2, 2), np.int8))
    return integer_model(g.nodes, [_vi("acc", TP.INT32, [2, 4]), _vi("f", TP.FLOAT, [2, 4])],
                         [_vi("r", TP.INT8, [2, 4]), _vi("qb", TP.INT8, [2, 4])], g.inits,
                         check=False)


def test_unsupported_op_names_the_node(tmp_path):
    model = _unsupported_model()
    with pytest.raises(UnsupportedOpError) as info:
        Plan(model, source="m.onnx")
    msg = str(info.value)
    assert "my_relu (Relu)" in msg and "blocked (QuantizeLinear with blocked quantization)" in msg
    assert [name for _, name in info.value.unsupported] == ["my_relu", "blocked"]
    art = _write(model, tmp_path / "bad.edgert")
    with pytest.raises(UnsupportedOpError, match="my_relu"):             # at load, not at run
        edgert.Session(art, backend="numba")
    assert "Relu" not in supported_ops() and "edgert.Shiftmax" in supported_ops()


def test_unsorted_graph_and_old_opset_are_model_errors(pipeline):
    model = onnx.ModelProto()
    model.CopyFrom(pipeline)
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes[::-1])
    with pytest.raises(ModelError, match="topological order"):
        Plan(model)
    model.CopyFrom(pipeline)
    model.opset_import[0].version = 11
    with pytest.raises(ModelError, match="opset >= 13"):
        Plan(model)


def test_constant_subgraphs_are_folded_at_load():
    g = _G()
    g.nodes.append(helper.make_node("Constant", [], ["two"], name="two",
                                    value=numpy_helper.from_array(np.array([2], np.int64))))
    g.n("Concat", ["two", g.c("rest", np.array([-1], np.int64))], "shape", axis=0)
    g.n("Reshape", ["x", "shape"], "y")
    model = g.model([_vi("x", TP.INT8, [2, 6])], [_vi("y", TP.INT8, [2, 6])])
    plan = Plan(model)
    assert [s.label for s in plan.steps] == ["reshape_y"]
    assert plan.constants["shape"].tolist() == [2, -1] and not plan.constants["shape"].flags.writeable
    x = np.arange(12, dtype=np.int8).reshape(2, 6)
    [y] = plan.run([x])
    np.testing.assert_array_equal(y, x)
    assert not np.shares_memory(y, x)            # an output never aliases an input


def test_beyond_the_contract_matches_onnxruntime():
    """Forms the quantizer does not emit but ONNX allows: per-axis QuantizeLinear with nonzero
    zero points (uint8 and int8), DequantizeLinear with a zero point, uint8 MatMulInteger and
    ConvInteger with scalar zero points and SAME padding."""
    import onnxruntime as ort

    rng = np.random.default_rng(7)
    g = _G()
    g.n("QuantizeLinear", ["f", g.c("sc", np.float32([0.02, 0.05, 0.1])),
                           g.c("zu", np.uint8([128, 3, 250]))], "qu", axis=1)
    g.n("QuantizeLinear", ["f", g.c("s1", np.float32(0.03)), g.c("zs", np.int8(-5))], "qs")
    g.n("DequantizeLinear", ["qs", g.c("s2", np.float32(0.03)), g.c("zs2", np.int8(-5))], "dqs")
    g.n("MatMulInteger", ["u", g.c("wu", rng.integers(0, 256, (6, 3), dtype=np.uint8)),
                          g.c("za", np.uint8(100)), g.c("zb", np.uint8(131))], "mmu")
    g.n("ConvInteger", ["img", g.c("wi", rng.integers(0, 256, (2, 1, 3, 3), dtype=np.uint8)),
                        g.c("zx", np.uint8(9)), g.c("zw", np.uint8(120))], "cv", auto_pad="SAME_UPPER",
        strides=[2, 2])
    model = g.model(
        [_vi("f", TP.FLOAT, [2, 3, 4]), _vi("u", TP.UINT8, [4, 6]), _vi("img", TP.UINT8, [1, 1, 7, 6])],
        [_vi("qu", TP.UINT8, [2, 3, 4]), _vi("qs", TP.INT8, [2, 3, 4]), _vi("dqs", TP.FLOAT, [2, 3, 4]),
         _vi("mmu", TP.INT32, [4, 3]), _vi("cv", TP.INT32, [1, 2, 4, 3])])
    feeds = {"f": (rng.standard_normal((2, 3, 4)) * 3).astype(np.float32),
             "u": rng.integers(0, 256, (4, 6), dtype=np.uint8),
             "img": rng.integers(0, 256, (1, 1, 7, 6), dtype=np.uint8)}
    plan = Plan(model)
    got = plan.run([feeds[n] for n in plan.input_names])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for vi, g_, want, ref in zip(model.graph.output, got, sess.run(None, feeds),
                                  run_reference(model, feeds)):
        assert_bit_exact(vi.name, g_, want)
        assert_bit_exact(vi.name, g_, ref)
