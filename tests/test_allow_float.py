"""``compile --int-only --allow-float``: nodes without an integer form stay float32.

The model under test is an MLP with a ``Sqrt`` in the middle, ``y = W2^T sqrt(relu(W1^T x +
b1)) + b2``, which the quantizer has no integer form for. Without the flag that is an error
naming the node; with it the Sqrt runs in float32 between a DequantizeLinear and a
QuantizeLinear. Sqrt is correctly rounded in IEEE float32 on every backend, so TVM, numba and
the numpy reference agree bit for bit.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgert import Session
from edgert.artifact import MODEL_MEMBER, read_artifact
from edgert.backends.numba_backend import Plan
from edgert.backends.reference import run_reference
from edgert.compiler import compile_model
from edgert.compiler.calibrate import calibrate
from edgert.compiler.check import check_model
from edgert.compiler.quantize import quantize_model
from edgert.errors import InputError, UnsupportedOpError
from edgert.intio import dequantize, quantize
from edgert.model_info import describe_model, inspect_path

from conftest import rel_err, run_cli
from ophelpers import assert_bit_exact

K, H, N = 16, 32, 8


def _weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"w1": (rng.standard_normal((K, H)) * 0.4).astype(np.float32),
            "b1": (rng.standard_normal(H) * 0.1).astype(np.float32),
            "w2": (rng.standard_normal((H, N)) * 0.4).astype(np.float32),
            "b2": (rng.standard_normal(N) * 0.1).astype(np.float32)}


def sqrt_mlp() -> onnx.ModelProto:
    """``x [batch, 16] -> MatMul + Add -> Relu -> Sqrt -> MatMul + Add -> y [batch, 8]``."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Add", ["h", "b1"], ["hb"], name="fc1_bias"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu"),
             helper.make_node("Sqrt", ["r"], ["s"], name="sqrt"),
             helper.make_node("MatMul", ["s", "w2"], ["o"], name="fc2"),
             helper.make_node("Add", ["o", "b2"], ["y"], name="fc2_bias")]
    graph = helper.make_graph(
        nodes, "sqrt_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", N])],
        [numpy_helper.from_array(v, k) for k, v in _weights().items()])
    return check_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _samples(n: int = 256, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, K)).astype(np.float32)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("allow_float")
    onnx.save(sqrt_mlp(), tmp / "sqrt_mlp.onnx")
    np.savez(tmp / "calib.npz", x=_samples())
    return {"tmp": tmp, "model": tmp / "sqrt_mlp.onnx", "calib": tmp / "calib.npz"}


@pytest.fixture(scope="module")
def artifact(files):
    return compile_model(files["model"], files["tmp"] / "sqrt_mlp.edgert", int_only=True,
                         calib=files["calib"], allow_float=True)


def _graph(path) -> onnx.ModelProto:
    return onnx.load_from_string(read_artifact(path).members[MODEL_MEMBER])


def test_without_the_flag_the_error_names_the_node(files):
    model = sqrt_mlp()
    ranges = calibrate(model, [{"x": _samples()}])
    with pytest.raises(UnsupportedOpError, match=r"sqrt \(Sqrt\)") as info:
        quantize_model(model, ranges)
    assert info.value.unsupported == [("Sqrt", "sqrt")] and "--allow-float" in str(info.value)
    with pytest.raises(UnsupportedOpError, match=r"sqrt \(Sqrt\)"):
        compile_model(files["model"], files["tmp"] / "no.edgert", int_only=True,
                      calib=files["calib"])
    with pytest.raises(InputError, match="--int-only"):
        compile_model(files["model"], files["tmp"] / "no.edgert", allow_float=True)
    assert not (files["tmp"] / "no.edgert").exists()


def test_inspect_lists_the_float_node(artifact):
    info = inspect_path(artifact)
    assert info["float_nodes"] == [{"name": "sqrt", "op_type": "Sqrt"}]
    assert info["float_conversions"] == 2 and info["float_ops"] == 3
    assert info["boundary_ops"] == 2 and info["untyped_tensors"] == 0
    assert info["quantization"]["float_nodes"] == {"sqrt": "Sqrt has no integer form"}
    assert info["quantization"]["narrowed"] == {}       # the bound below assumes full ranges
    assert info["compile_options"]["allow_float"] is True
    nodes = {n.name: n for n in _graph(artifact).graph.node}
    producer = {o: n for n in nodes.values() for o in n.output}
    consumers = [n for n in nodes.values() if "s" in n.input]
    assert producer[nodes["sqrt"].input[0]].op_type == "DequantizeLinear"
    assert [n.op_type for n in consumers] == ["QuantizeLinear"]      # requantized for fc2
    # an fp32 graph lists every node; an integer graph none
    assert len(describe_model(sqrt_mlp())["float_nodes"]) == 6


def _bound(x: np.ndarray, calib: np.ndarray) -> np.ndarray:
    """A worst-case bound on |y_int - y_fp32| from the quantization steps (float64 numpy).

    Every activation is int8 or int16 with scale <= amax / 127 (amax calibrated), so rounding
    it moves a value by at most amax / 254; int8 weights per output channel move by at most
    s_w / 2 (s_w = max |column| / 127), int32 biases by s_x s_w / 2. A Linear turns input error
    e into sum_k |W_kj| e_k + (s_w_j / 2) sum_k (|x_k| + e_k) + bias error; Relu and clamping to
    a range that holds the fp32 value do not increase it; sqrt turns e into at most
    min(sqrt(e), e / sqrt(r)) (r the fp32 value). x is within the calibrated range (no clipping).
    The result is scaled by 1.001 and 1e-4 added for float32 rounding (boundary division,
    dequantize products, onnxruntime's fp32).
    """
    w = {k: v.astype(np.float64) for k, v in _weights().items()}

    def forward(v):
        h = v.astype(np.float64) @ w["w1"] + w["b1"]
        r = np.maximum(h, 0.0)
        return r, np.sqrt(r)

    r_cal, s_cal = forward(calib)
    step = {"x": np.abs(calib).max() / 127, "r": r_cal.max() / 127, "s": s_cal.max() / 127}
    r, s = forward(x)

    def linear(v, e, wk, s_in):
        s_w = np.abs(wk).max(axis=0) / 127
        return e @ np.abs(wk) + (np.abs(v) + e) @ np.ones_like(wk) * (s_w / 2) + s_in * s_w / 2

    e_x = np.full_like(x, step["x"] / 2, dtype=np.float64)
    e_r = linear(x, e_x, w["w1"], step["x"]) + step["r"] / 2
    with np.errstate(divide="ignore"):
        e_s = np.minimum(np.sqrt(e_r), np.where(r > 0, e_r / np.sqrt(r), np.inf)) + step["s"] / 2
    e_y = linear(s, e_s, w["w2"], step["s"])
    return e_y * 1.001 + 1e-4


def test_outputs_within_the_quantization_bound_of_fp32(files, artifact):
    calib = np.load(files["calib"])["x"]
    x = calib[:128]                                   # inside the calibrated range
    want = ort.InferenceSession(str(files["model"])).run(None, {"x": x})[0]
    [got] = Session(artifact).run(None, {"x": x})
    bound = _bound(x, calib)
    err = np.abs(got.astype(np.float64) - want)
    assert (err <= bound).all(), float((err - bound).max())
    assert rel_err(got, want) < 0.05                  # measured ~0.02 (Sqrt near 0 dominates)


def test_backends_bit_exact(files, artifact):
    x = _samples(200, seed=3) * 1.5                   # some outside the calibrated range
    x[0] = 1e6
    x[1] = 0.0
    want = run_reference(_graph(artifact), {"x": x})[0]
    for backend in ("tvm", "numba"):
        assert_bit_exact(backend, Session(artifact, backend=backend).run(None, {"x": x})[0], want)


def test_cli_allow_float_with_integer_io(files, tmp_path):
    art = tmp_path / "m.edgert"
    refused = run_cli("compile", str(files["model"]), "--int-only", "--calib", str(files["calib"]),
                      "-o", str(art))
    assert refused.returncode == UnsupportedOpError.exit_code
    lines = [ln for ln in refused.stderr.splitlines() if ln.strip() and "Warning" not in ln]
    assert len(lines) == 1 and "sqrt (Sqrt)" in lines[0] and "--allow-float" in lines[0]
    done = run_cli("compile", str(files["model"]), "--int-only", "--calib", str(files["calib"]),
                   "--allow-float", "--io", "int8", "-o", str(art))
    assert done.returncode == 0, done.stderr
    text = " ".join(run_cli("inspect", str(art)).stdout.split())
    assert "float ops inside the graph: 3" in text and "float nodes: sqrt (Sqrt)" in text
    info = json.loads(run_cli("inspect", str(art), "--json").stdout)
    assert info["float_nodes"] == [{"name": "sqrt", "op_type": "Sqrt"}]
    assert info["boundary_ops"] == 0 and info["inputs"][0]["dtype"] == "int8"
    io = info["quantization"]["io"]
    x = _samples(32, seed=4)
    q = quantize(x, io["inputs"]["x"])
    outs = [Session(art, backend=b).run(None, {"x": q})[0] for b in ("tvm", "numba")]
    assert_bit_exact("tvm vs numba", outs[0], outs[1])
    want = ort.InferenceSession(str(files["model"])).run(None, {"x": x})[0]
    assert rel_err(dequantize(outs[0], io["outputs"]["y"]), want) < 0.05


# --- the quantizer: handler failures roll back, float graph outputs -----------------------------

def _act_matmul_model() -> onnx.ModelProto:
    """``relu(a @ b)`` of two inputs whose inner dimension ``k`` is symbolic: the activation
    MatMul handler quantizes both operands, then fails (the int32 bound needs a static k)."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["p"], name="act_matmul"),
         helper.make_node("Relu", ["p"], ["y"], name="relu")], "act_mm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["m", "k"]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["k", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", 4])])
    return check_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_a_failing_handler_is_rolled_back_and_the_node_kept_float():
    model = _act_matmul_model()
    rng = np.random.default_rng(0)
    feed = {"a": rng.standard_normal((6, 5)).astype(np.float32),
            "b": rng.standard_normal((5, 4)).astype(np.float32)}
    ranges = calibrate(model, [feed])
    with pytest.raises(Exception, match="inner dimension"):
        quantize_model(model, ranges)
    qmodel, report = quantize_model(model, ranges, allow_float=True)
    assert list(report.float_nodes) == ["act_matmul"]
    assert "inner dimension" in report.float_nodes["act_matmul"]
    ops = [n.op_type for n in qmodel.graph.node]
    # no QuantizeLinear of a or b left behind: the float MatMul reads the inputs themselves
    assert ops == ["MatMul", "QuantizeLinear", "Requant", "DequantizeLinear"], ops
    assert list(qmodel.graph.node[0].input) == ["a", "b"]
    info = describe_model(qmodel)
    assert info["float_nodes"] == [{"name": "act_matmul", "op_type": "MatMul"}]
    got = run_reference(qmodel, feed)[0]
    assert_bit_exact("numba", Plan(qmodel).run([feed["a"], feed["b"]])[0], got)
    want = ort.InferenceSession(model.SerializeToString()).run(None, feed)[0]
    assert rel_err(got, want) < 0.01


def _float_tail_model() -> onnx.ModelProto:
    """``y = sqrt(d) / d`` with ``d = relu(x @ w) + 1``, and ``z = relu(x @ w)``: the float
    nodes' output is the graph output; the Div of two activations has no integer form either."""
    w = (np.random.default_rng(2).standard_normal((K, H)) * 0.3).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
         helper.make_node("Relu", ["h"], ["z"], name="relu"),
         helper.make_node("Add", ["z", "one"], ["d"], name="plus_one"),
         helper.make_node("Sqrt", ["d"], ["s"], name="sqrt"),
         helper.make_node("Div", ["s", "d"], ["y"], name="div")], "tail",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", H]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", H])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.float32(1.0), "one")])
    return check_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.mark.parametrize("io", ["float", "int8"])
def test_float_nodes_feeding_the_graph_output(io):
    model = _float_tail_model()
    x = _samples(64, seed=5)
    ranges = calibrate(model, [{"x": x}])
    qmodel, report = quantize_model(model, ranges, allow_float=True, io=io)
    assert list(report.float_nodes) == ["sqrt", "div"]
    assert "two activations" in report.float_nodes["div"]
    info = describe_model(qmodel)
    assert [n["name"] for n in info["float_nodes"]] == ["sqrt", "div"]
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    feed = {"x": x} if io == "float" else {"x": quantize(x, report.io["inputs"]["x"])}
    got = run_reference(qmodel, feed)
    for a, b in zip(got, Plan(qmodel).run([feed["x"]])):
        assert_bit_exact("numba vs reference", b, a)
    if io == "float":
        assert info["outputs"][0]["dtype"] == "float32"     # y straight from the float Div
        assert info["boundary_ops"] == 2                      # x quantized, z dequantized
        y, z = got
    else:
        assert [v["dtype"] for v in info["outputs"]] == ["int16", "int16"]
        assert info["boundary_ops"] == 0
        y, z = (dequantize(v, report.io["outputs"][n]) for v, n in zip(got, "yz"))
    assert rel_err(y, want[0]) < 0.05 and rel_err(z, want[1]) < 0.02


def test_numba_runs_float_nodes_on_onnx_reference_and_names_what_it_cannot():
    """Float nodes without a numba kernel run on onnx.reference; an op it does not know either
    (or a node whose outputs are not declared float) is refused at load, by node."""
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Sin", ["x"], ["s"], name="sin"),
         helper.make_node("Div", ["s", "x"], ["y"], name="div")], "g",
        [vi("x", TensorProto.FLOAT, [3])], [vi("y", TensorProto.FLOAT, [3])],
        value_info=[vi("s", TensorProto.FLOAT, [3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    x = np.float32([0.5, -2.0, 3.0])
    [y] = Plan(model).run([x])
    assert_bit_exact("y", y, (np.sin(x) / x).astype(np.float32))
    bad = helper.make_graph(
        [helper.make_node("FooBar", ["x"], ["y"], name="foo"),
         helper.make_node("Sin", ["x"], ["z"], name="untyped_sin")], "g",
        [vi("x", TensorProto.FLOAT, [3])], [vi("y", TensorProto.FLOAT, [3])])
    with pytest.raises(UnsupportedOpError) as info:
        Plan(helper.make_model(bad, opset_imports=[helper.make_opsetid("", 21)]))
    assert info.value.unsupported == [("FooBar with no onnx.reference implementation", "foo"),
                                      ("Sin", "untyped_sin")]
