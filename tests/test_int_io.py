"""Integer I/O (``compile --int-only --io int8``): the graph takes and returns the integer tensors.

What is provable, and asserted bit for bit: the ``--io int8`` graph of the tiny ViT is the
``--io float`` graph without its two boundary ops (the image is quantized once, at the scale the
manifest records). So for any float input ``x``:
- feeding ``q = saturate(round_half_even(float32(x) / float32(scale_in)))`` (what the float
  graph's QuantizeLinear computes) gives the integer logits ``q_out`` whose
  ``float32(q_out) * float32(scale_out)`` (per channel) *is* the float graph's output (the same
  one float32 multiply its DequantizeLinear does);
- TVM, numba and the numpy reference give the same integers for every int8 input, -128 included.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
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
from edgert.demo import demo_calib_file, demo_files
from edgert.errors import InputError, QuantizationError
from edgert.intio import dequantize, io_specs, quantize
from edgert.model_info import describe_model, inspect_path

from conftest import rel_err, run_cli
from ophelpers import assert_bit_exact

CALIB = demo_calib_file()
BOUNDARY = {"QuantizeLinear", "DequantizeLinear"}


@pytest.fixture(scope="module")
def vit_pair(tmp_path_factory) -> tuple:
    """(float-I/O artifact, integer-I/O artifact) of the demo ViT, same calibration."""
    tmp = tmp_path_factory.mktemp("intio")
    model = demo_files()[0]
    return (compile_model(model, tmp / "vit_float.edgert", int_only=True, calib=CALIB),
            compile_model(model, tmp / "vit_int_io.edgert", int_only=True, calib=CALIB, io="int8"))


def _graph(path) -> onnx.ModelProto:
    return onnx.load_from_string(read_artifact(path).members[MODEL_MEMBER])


def _quantize_by_hand(x: np.ndarray, spec: dict) -> np.ndarray:
    """The contract's QuantizeLinear, written out: float32 division, round half to even, clip."""
    info = np.iinfo(spec["dtype"])
    q = np.rint(x.astype(np.float32) / np.float32(spec["scale"]))
    return np.clip(q, info.min, info.max).astype(spec["dtype"])


def test_graph_has_integer_io_and_no_boundary_ops(vit_pair):
    _, art = vit_pair
    assert not {n.op_type for n in _graph(art).graph.node} & BOUNDARY
    info = inspect_path(art)
    assert info["float_ops"] == 0 and info["boundary_ops"] == 0 and info["untyped_tensors"] == 0
    assert info["float_nodes"] == [] and info["float_conversions"] == 0
    assert info["inputs"] == [{"name": "image", "shape": ["batch", 1, 8, 8], "dtype": "int8"}]
    assert info["outputs"] == [{"name": "logits", "shape": ["batch", 10], "dtype": "int32"}]
    m = Session(art).manifest
    assert m["compile_options"]["io"] == "int8" and m["compile_options"]["allow_float"] is False
    io = io_specs(m)
    assert io == info["quantization"]["io"]
    image, logits = io["inputs"]["image"], io["outputs"]["logits"]
    assert image["dtype"] == "int8" and image["axis"] is None
    assert image["scale"] == float(np.float32(image["scale"])) > 0      # a float32 value
    # the final Linear's int32 accumulator, one scale per class along axis 1
    assert logits["dtype"] == "int32" and logits["axis"] == 1 and len(logits["scale"]) == 10
    assert all(s == float(np.float32(s)) > 0 for s in logits["scale"])
    assert io_specs(Session(vit_pair[0]).manifest) is None              # float I/O: no scales
    # the session says what it wants
    [spec] = Session(art).get_inputs()
    assert spec.dtype == "int8" and spec.type == "tensor(int8)"


def test_integer_outputs_are_what_the_float_graph_dequantizes(vit_pair):
    float_art, int_art = vit_pair
    io = io_specs(Session(int_art).manifest)
    s_in, s_out = io["inputs"]["image"], io["outputs"]["logits"]
    data = np.load(demo_files()[1])
    x = data["images"].copy()
    x[0], x[1], x[2] = 1e6, -1e6, 0.0                    # saturating and zero images
    x[3] = np.float32(s_in["scale"]) * np.float32(0.5)   # a tie: rounds to 0 (half to even)
    x[4] = np.float32(s_in["scale"]) * np.float32(1.5)   # a tie: rounds to 2
    q = _quantize_by_hand(x, s_in)
    assert q.min() == -128 and q.max() == 127 and (q[3] == 0).all() and (q[4] == 2).all()
    assert_bit_exact("intio.quantize", quantize(x, s_in), q)
    scale = np.float32(s_out["scale"]).reshape(1, 10)
    results = {}
    for backend in ("tvm", "numba"):
        [y] = Session(float_art, backend=backend).run(None, {"image": x})
        [q_out] = Session(int_art, backend=backend).run(None, {"image": q})
        assert q_out.dtype == np.int32
        assert_bit_exact(f"{backend}: float32(q_out) * scale", q_out.astype(np.float32) * scale, y)
        assert_bit_exact(f"{backend}: intio.dequantize", dequantize(q_out, s_out), y)
        results[backend] = q_out
    assert_bit_exact("tvm vs numba", results["tvm"], results["numba"])
    [ref] = run_reference(_graph(int_art), {"image": q})
    assert_bit_exact("tvm vs reference", results["tvm"], ref)
    # same predictions as the float-I/O artifact, hence its accuracy
    acc = float((results["tvm"][5:].argmax(1) == data["labels"][5:]).mean())
    assert acc > 0.95, acc


@pytest.mark.parametrize("batch", [1, 7])
def test_backends_agree_on_every_int8_input(vit_pair, batch):
    """Integers the float graph can also produce, -128 included, in random images."""
    _, art = vit_pair
    q = np.random.default_rng(batch).integers(-128, 128, (batch, 1, 8, 8)).astype(np.int8)
    q[0, 0, 0] = -128
    want = run_reference(_graph(art), {"image": q})[0]
    for backend in ("tvm", "numba"):
        assert_bit_exact(backend, Session(art, backend=backend).run(None, {"image": q})[0], want)


def test_session_refuses_a_float_input_with_the_scale_to_use(vit_pair):
    _, art = vit_pair
    sess = Session(art, backend="numba")
    x = np.zeros((1, 1, 8, 8), np.float32)
    with pytest.raises(InputError, match=r"expected dtype int8, got float32 \(this artifact has "
                                         r"integer I/O"):
        sess.run(None, {"image": x})
    with pytest.raises(InputError, match="expected dtype int8, got int16$"):
        sess.run(None, {"image": x.astype(np.int16)})
    scale = io_specs(sess.manifest)["inputs"]["image"]["scale"]
    with pytest.raises(InputError, match=repr(scale).replace(".", r"\.")):
        sess.run(None, {"image": x})


def test_compile_refuses_io_without_int_only(tmp_path):
    with pytest.raises(InputError, match="--int-only"):
        compile_model(demo_files()[0], tmp_path / "x.edgert", io="int8")
    with pytest.raises(InputError, match="io must be one of float, int8"):
        compile_model(demo_files()[0], tmp_path / "x.edgert", int_only=True, calib=CALIB,
                      io="int4")
    assert not (tmp_path / "x.edgert").exists()


# --- the quantizer on a graph with a shared input, an integer input and a per-tensor output ---

def _residual_masked_model() -> onnx.ModelProto:
    """``y = (x @ w + x) * float(mask)``, ``z = relu(x @ w)``: ``x`` feeds an int8 Linear and
    the int16 residual Add; ``mask`` is an int64 input that stays int64."""
    w = (np.random.default_rng(0).standard_normal((8, 8)) * 0.3).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
             helper.make_node("Add", ["h", "x"], ["res"], name="residual"),
             helper.make_node("Cast", ["mask"], ["maskf"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Mul", ["res", "maskf"], ["y"], name="masked"),
             helper.make_node("Relu", ["h"], ["z"], name="relu")]
    graph = helper.make_graph(
        nodes, "residual_masked",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8]),
         helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 8])],
        [numpy_helper.from_array(w, "w")])
    return check_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_shared_input_takes_the_widest_dtype_and_integer_inputs_stay():
    import onnxruntime as ort

    model = _residual_masked_model()
    rng = np.random.default_rng(1)
    feed = {"x": rng.standard_normal((64, 8)).astype(np.float32),
            "mask": rng.integers(0, 2, (64, 8)).astype(np.int64)}
    ranges = calibrate(model, [feed])
    qmodel, report = quantize_model(model, ranges, io="int8")
    info = describe_model(qmodel)
    assert info["float_ops"] == 0 and info["boundary_ops"] == 0 and info["untyped_tensors"] == 0
    types = {v["name"]: v["dtype"] for v in info["inputs"] + info["outputs"]}
    assert types == {"x": "int16", "mask": "int64", "y": "int32", "z": "int16"}
    assert set(report.io["inputs"]) == {"x"}                        # mask is not listed
    assert report.io["outputs"]["y"]["axis"] is None                # per-tensor outputs
    assert report.io["outputs"]["z"] == {"dtype": "int16", "axis": None,
                                         "scale": report.io["outputs"]["z"]["scale"]}
    q = {"x": quantize(feed["x"], report.io["inputs"]["x"]), "mask": feed["mask"]}
    got = run_reference(qmodel, q)
    for a, b in zip(got, Plan(qmodel).run([q["x"], q["mask"]])):
        assert_bit_exact("numba vs reference", b, a)
    want = ort.InferenceSession(model.SerializeToString()).run(None, feed)
    for name, g, w in zip(("y", "z"), got, want):
        assert rel_err(dequantize(g, report.io["outputs"][name]), w) < 0.02, name
    # the float-I/O graph quantizes x twice (int8 for the Linear, int16 for the Add); here the
    # int16 input is requantized to int8 for the Linear instead
    floatq, _ = quantize_model(model, ranges)
    assert sum(n.op_type == "QuantizeLinear" for n in floatq.graph.node) == 2
    assert any(n.op_type == "Requant" and n.input[0] == "x" for n in qmodel.graph.node)


def test_bad_io_mode_is_a_quantization_error():
    model = _residual_masked_model()
    with pytest.raises(QuantizationError, match="io must be"):
        quantize_model(model, {}, io="uint8")


# --- the command line ------------------------------------------------------------------------

def test_cli_compile_io_int8_inspect_and_run(tmp_path):
    model = demo_files()[0]
    refused = run_cli("compile", str(model), "--io", "int8", "-o", str(tmp_path / "x.edgert"))
    assert refused.returncode == InputError.exit_code and "--int-only" in refused.stderr
    usage = run_cli("compile", str(model), "--int-only", "--calib", str(CALIB), "--io", "int4")
    assert usage.returncode == 2 and "int4" in usage.stderr
    art = tmp_path / "vit_io.edgert"
    done = run_cli("compile", str(model), "--int-only", "--calib", str(CALIB), "--io", "int8",
                   "-o", str(art))
    assert done.returncode == 0, done.stderr
    info = json.loads(run_cli("inspect", str(art), "--json").stdout)
    assert info["boundary_ops"] == 0 and info["float_ops"] == 0
    scale = info["quantization"]["io"]["inputs"]["image"]["scale"]
    text = " ".join(run_cli("inspect", str(art)).stdout.split())       # rich wraps long lines
    assert "integer I/O" in text and f"{scale:.6g}" in text and "per channel, axis 1" in text
    x = np.load(demo_files()[1])["images"][:4]
    np.save(tmp_path / "x.npy", x)
    bad = run_cli("run", str(art), "--input", f"image={tmp_path / 'x.npy'}")
    assert bad.returncode == InputError.exit_code and "integer I/O" in bad.stderr
    np.save(tmp_path / "q.npy", quantize(x, info["quantization"]["io"]["inputs"]["image"]))
    ran = run_cli("run", str(art), "--input", f"image={tmp_path / 'q.npy'}", "-o",
                  str(tmp_path / "out.npz"))
    assert ran.returncode == 0, ran.stderr
    assert np.load(tmp_path / "out.npz")["logits"].dtype == np.int32
