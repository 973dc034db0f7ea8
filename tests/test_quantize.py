"""Calibration and the quantizer: fp32 ONNX -> integer ONNX, checked with the numpy reference."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgert.backends.reference import run_reference
from edgert.compiler.calibrate import calibrate, load_samples
from edgert.compiler.check import check_model, load_model
from edgert.compiler.quantize import quantize_model
from edgert.demo import demo_calib_file, demo_files
from edgert.errors import InputError, QuantizationError, UnsupportedOpError
from edgert.model_info import describe_model

INT32_MAX = 2**31 - 1

CALIB = demo_calib_file()


@pytest.fixture(scope="module")
def vit():
    """(fp32 model, ranges, test images, labels, fp32 logits)."""
    model_path, test_path = demo_files()
    model = load_model(model_path)
    ranges = calibrate(model, load_samples(CALIB, ["image"]))
    data = np.load(test_path)
    fp32 = ort.InferenceSession(str(model_path)).run(None, {"image": data["images"]})[0]
    return model, ranges, data["images"], data["labels"], fp32


# --- calibration ---------------------------------------------------------------------------

def test_load_samples_accepts_npz_and_directories(tmp_path):
    x = np.zeros((3, 4), np.float32)
    np.savez(tmp_path / "a.npz", x=x)
    np.save(tmp_path / "b.npy", x + 1)
    feeds = load_samples(tmp_path, ["x"])
    assert [float(f["x"].max()) for f in feeds] == [0.0, 1.0]
    assert len(load_samples(tmp_path / "a.npz", ["x"])) == 1


@pytest.mark.parametrize("case,match", [
    ("missing", "does not exist"), ("empty_dir", "holds no"), ("wrong_name", "no array for input"),
    ("npy_two_inputs", "single-input"), ("not_npz", "not a readable"),
])
def test_load_samples_errors_say_what_is_wrong(tmp_path, case, match):
    names = ["x"]
    if case == "missing":
        path = tmp_path / "nope.npz"
    elif case == "empty_dir":
        path = tmp_path
    elif case == "wrong_name":
        path = tmp_path / "a.npz"
        np.savez(path, y=np.zeros(2))
    elif case == "npy_two_inputs":
        np.save(tmp_path / "a.npy", np.zeros(2))
        path, names = tmp_path, ["x", "y"]
    else:
        path = tmp_path / "bad.npz"
        path.write_bytes(b"not a zip")
    with pytest.raises(InputError, match=match):
        load_samples(path, names)


def test_calibration_ranges_minmax_and_percentile(vit):
    model, ranges, *_ = vit
    calib = load_samples(CALIB, ["image"])
    assert ranges["image"].amax == pytest.approx(float(np.abs(calib[0]["image"]).max()))
    seen = []
    pct = calibrate(model, calib, method="percentile", percentile=99.0,
                    progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1][0] == seen[-1][1]
    assert set(pct) == set(ranges)
    assert all(pct[k].amax <= ranges[k].amax + 1e-6 for k in ranges)
    assert any(pct[k].amax < 0.9 * ranges[k].amax for k in ranges)
    layer_out = "layer_norm"
    assert ranges[layer_out].channel_amax.shape == (32,)
    with pytest.raises(InputError, match="unknown calibration method"):
        calibrate(model, calib, method="entropy")


# --- the integer graph ---------------------------------------------------------------------

def test_vit_integer_graph_has_no_float_ops_and_keeps_accuracy(vit):
    model, ranges, images, labels, fp32 = vit
    qmodel, report = quantize_model(model, ranges)
    info = describe_model(qmodel)
    assert info["float_ops"] == 0 and info["boundary_ops"] == 2      # QuantizeLinear + DequantizeLinear
    assert info["untyped_tensors"] == 0
    ops = {n.op_type for n in qmodel.graph.node}
    assert {"Shiftmax", "ShiftGELU", "ILayerNorm", "Requant", "MatMulInteger", "ConvInteger"} <= ops
    [logits] = run_reference(qmodel, {"image": images})
    acc_fp32 = float((fp32.argmax(1) == labels).mean())
    acc_int = float((logits.argmax(1) == labels).mean())
    assert acc_int >= acc_fp32 - 0.01, (acc_int, acc_fp32)
    # logits stay close to fp32 (measured max |diff| 0.51 on logits up to 5.3)
    assert np.abs(logits - fp32).max() < 0.1 * np.abs(fp32).max()


def linear_inputs(model: onnx.ModelProto) -> set[str]:
    """The first inputs of the MatMul/Gemm nodes with a constant weight."""
    consts = {t.name for t in model.graph.initializer}
    return {n.input[0] for n in model.graph.node
            if n.op_type in ("MatMul", "Gemm") and n.input[1] in consts}


def test_act_bits_policy(vit):
    model, ranges, *_ = vit
    _, auto = quantize_model(model, ranges)
    assert auto.dtypes["add_17"] == "int16"            # residual stream
    assert auto.dtypes["layer_norm"] == "int8"         # Q/K/V Linear input
    assert auto.dtypes["layer_norm_1"] == "int16"      # FFN up-projection input
    assert auto.dtypes["gelu"] == "int16"              # FFN down-projection input
    assert auto.dtypes["mul_42"] == "int8"             # attention scores into Shiftmax
    _, linear8 = quantize_model(model, ranges, act_bits="linear8")
    assert linear8.dtypes["add_17"] == "int16" and linear8.dtypes["mul_42"] == "int8"
    assert linear8.dtypes["layer_norm_1"] == "int8" and linear8.dtypes["gelu"] == "int8"
    assert {d for n, d in linear8.dtypes.items() if n in linear_inputs(model)} == {"int8"}
    _, eight = quantize_model(model, ranges, act_bits="8")
    assert set(eight.dtypes.values()) == {"int8"}
    _, sixteen = quantize_model(model, ranges, act_bits="16")
    assert sixteen.dtypes["layer_norm"] == "int16" and sixteen.dtypes["mul_42"] == "int8"
    with pytest.raises(QuantizationError, match="act_bits"):
        quantize_model(model, ranges, act_bits="4")


def _linear_model(k: int, n: int, weight: np.ndarray, bias: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["y"]),
         helper.make_node("Gelu", ["y"], ["g"])],
        "lin", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k])],
        [helper.make_tensor_value_info("g", TensorProto.FLOAT, ["batch", n])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    return check_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]))


def test_accumulator_bound_narrows_int16_inputs_instead_of_overflowing():
    """K = 1024 int16 inputs against int8 weights of the same magnitude: 32767 * 127 * 1024 > 2**31.
    The quantizer narrows the activation range to the largest qmax whose worst accumulator,
    (qmax + 1) * sum|w| (the +1 for saturation at -qmax-1), fits int32: here
    INT32_MAX // (127 * 1024) - 1 = 16512; the graph clamps to it, and the input that reaches
    the bound gives exactly qmax * 127 * 1024 in the accumulator, inside int32."""
    rng = np.random.default_rng(0)
    k, n = 1024, 4
    w = np.sign(rng.standard_normal((k, n))).astype(np.float32)        # every |w_int8| = 127
    model = _linear_model(k, n, w, np.zeros(n, np.float32))
    x = rng.uniform(-1, 1, (16, k)).astype(np.float32)
    ranges = calibrate(model, [{"x": x}])
    qmodel, report = quantize_model(model, ranges)                      # FFN input -> int16
    l1 = 127 * k
    qmax = INT32_MAX // l1 - 1
    assert qmax == 16512 and (qmax + 1) * l1 <= INT32_MAX < (qmax + 2) * l1
    assert report.dtypes["x"] == "int16" and report.narrowed == {"x": qmax}
    [matmul] = [nd for nd in qmodel.graph.node if nd.op_type == "IntMatMul"]
    [clamp] = [nd for nd in qmodel.graph.node if nd.output[0] == matmul.input[0]]
    attrs = {a.name: a.i for a in clamp.attribute}
    assert clamp.op_type == "Requant" and (attrs["lo"], attrs["hi"]) == (-qmax, qmax)
    [quant] = [nd for nd in qmodel.graph.node if nd.op_type == "QuantizeLinear"]
    scale = {t.name: numpy_helper.to_array(t) for t in qmodel.graph.initializer}[quant.input[1]]
    np.testing.assert_allclose(scale, ranges["x"].amax / qmax, rtol=1e-6)   # a coarser scale
    qmodel.graph.output.append(helper.make_tensor_value_info(matmul.output[0], TensorProto.INT32,
                                                             None))
    worst = np.sign(w[:, :1].T).astype(np.float32) * np.float32(ranges["x"].amax)
    _, acc = run_reference(qmodel, {"x": np.concatenate([worst, -worst])})  # raises on overflow
    np.testing.assert_array_equal(acc[:, 0], [qmax * l1, -qmax * l1])      # the bound, reached


def test_unquantizable_ops_are_listed_by_node(model_files):
    model = load_model(model_files["mlp"])
    [tanh] = [n for n in model.graph.node if n.op_type == "Tanh"]
    tanh.op_type = "Sin"                   # (Tanh has an integer form: edgert.IntTable)
    ranges = calibrate(model, [{"x": np.ones((4, 20), np.float32)}])
    with pytest.raises(UnsupportedOpError, match=r"Sin"):
        quantize_model(model, ranges)


def test_missing_range_is_a_clear_error(vit):
    model, ranges, *_ = vit
    partial = {k: v for k, v in ranges.items() if k != "mul_42"}   # scores into Softmax
    with pytest.raises(QuantizationError, match="mul_42"):
        quantize_model(model, partial)


def test_transformer_encoder_quantizes_closely(model_files):
    model = load_model(model_files["encoder"])
    rng = np.random.default_rng(0)
    ranges = calibrate(model, [{"x": rng.standard_normal((32, 32, 64)).astype(np.float32)}])
    qmodel, _ = quantize_model(model, ranges)
    assert describe_model(qmodel)["float_ops"] == 0
    x = rng.standard_normal((4, 32, 64)).astype(np.float32)
    [ours] = run_reference(qmodel, {"x": x})
    want = ort.InferenceSession(str(model_files["encoder"])).run(None, {"x": x})[0]
    cos = float((ours * want).sum() / np.linalg.norm(ours) / np.linalg.norm(want))
    assert cos > 0.999, cos                                            # measured 0.99998
