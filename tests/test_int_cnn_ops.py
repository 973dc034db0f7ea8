"""Integer-only rules for CNN ops that exporters leave as they are: a BatchNormalization after a
Conv (folded into its int32 accumulator) or after another op (a per-channel Requant to int32
plus an int32 bias), and Resize (nearest: the integer tensor moved as it is; linear: refused
with a message naming the mode).

Each compiled model has no float op inside the graph, the numba backend equals the TVM build
bit for bit, and the output is close to onnxruntime fp32 (cosine per image >= MIN_COSINE).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgert import Session
from edgert.artifact import MODEL_MEMBER, read_artifact
from edgert.compiler import compile_model
from edgert.errors import QuantizationError
from edgert.model_info import describe_model

from conftest import batchnorm_cnn_onnx
from ophelpers import assert_bit_exact, row_cosines, export_dynamic_batch

torch = pytest.importorskip("torch")
nn = torch.nn

MIN_COSINE = 0.98
SIZE = 16


def compile_and_check(path, tmp_path, name: str) -> tuple[onnx.ModelProto, float]:
    """Compile ``--int-only``; assert no float op and numba == TVM; returns the integer graph
    and the smallest cosine to onnxruntime fp32 over 4 images."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz",
             x=rng.standard_normal((8, 3, SIZE, SIZE)).astype(np.float32))
    artifact = compile_model(path, tmp_path / f"{name}.edgert", int_only=True,
                             calib=tmp_path / "calib.npz")
    graph = onnx.load_from_string(read_artifact(artifact).members[MODEL_MEMBER])
    info = describe_model(graph)
    assert info["float_ops"] == 0, info["float_nodes"]
    feed = {"x": rng.standard_normal((4, 3, SIZE, SIZE)).astype(np.float32)}
    fp32 = ort.InferenceSession(str(path)).run(None, feed)[0]
    tvm_out = Session(artifact, backend="tvm").run(None, feed)[0]
    assert_bit_exact(f"{name}: numba vs tvm", Session(artifact, backend="numba").run(None, feed)[0],
                     tvm_out)
    cos = float(row_cosines(tvm_out, fp32).min())
    print(f"{name}: cosine {cos:.5f}")
    return graph, cos


def test_batchnorm_after_conv_is_folded(tmp_path):
    """Conv -> BatchNormalization (gamma > 0): the BN becomes one int32 Add on the Conv's
    accumulator (no Requant of its own)."""
    path = batchnorm_cnn_onnx(tmp_path / "bn.onnx")
    graph, cos = compile_and_check(path, tmp_path, "conv_bn")
    ops = [n.op_type for n in graph.graph.node]
    assert "BatchNormalization" not in ops
    assert ops.count("Requant") == 1          # the Relu/MaxPool input only
    assert cos >= MIN_COSINE


class BnAfterRelu(nn.Module):
    """BatchNorm after a Relu (the exporter cannot fold it), with negative and zero gammas."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        with torch.no_grad():
            self.bn.weight.copy_(torch.tensor([1.5, -0.7, 0.0, 0.3, -2.0, 1.0, 0.8, 0.05]))
            self.bn.bias.uniform_(-0.5, 0.5)
            self.bn.running_mean.uniform_(0.0, 0.5)
            self.bn.running_var.uniform_(0.2, 2.0)

    def forward(self, x):
        return self.conv2(self.bn(torch.relu(self.conv1(x))))


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_batchnorm_after_non_conv(tmp_path, exporter):
    torch.manual_seed(0)
    model = BnAfterRelu().eval()
    path = export_dynamic_batch(model, torch.randn(2, 3, SIZE, SIZE), tmp_path / "bn.onnx", exporter)
    assert "BatchNormalization" in {n.op_type for n in onnx.load(path).graph.node}
    _, cos = compile_and_check(path, tmp_path, f"bn_relu_{exporter}")
    assert cos >= MIN_COSINE


class Upsample(nn.Module):
    """conv -> upsample x2 -> conv, plus an upsampled skip added (a YOLO/FPN neck in small)."""

    def __init__(self, mode: str):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Conv2d(8, 4, 3,
                                                                                   padding=1)
        self.up = nn.Upsample(scale_factor=2, mode=mode)

    def forward(self, x):
        return self.conv2(torch.relu(self.up(self.conv1(x))))


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_resize_nearest(tmp_path, exporter):
    torch.manual_seed(0)
    path = export_dynamic_batch(Upsample("nearest").eval(), torch.randn(2, 3, SIZE, SIZE),
                  tmp_path / "up.onnx", exporter)
    assert "Resize" in {n.op_type for n in onnx.load(path).graph.node}
    graph, cos = compile_and_check(path, tmp_path, f"resize_{exporter}")
    assert "Resize" in {n.op_type for n in graph.graph.node}
    assert cos >= MIN_COSINE


@pytest.mark.parametrize("coord, nearest", [("asymmetric", "floor"),
                                            ("half_pixel", "round_prefer_floor"),
                                            ("align_corners", "round_prefer_ceil"),
                                            ("pytorch_half_pixel", "ceil")])
def test_resize_nearest_modes_sizes(tmp_path, coord, nearest):
    """Resize by ``sizes`` (not a whole factor: 16 -> 24 x 12) in each coordinate mode: the
    integer tensor moves as it is, numba == TVM."""
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3, "w")
    sizes = numpy_helper.from_array(np.array([2, 4, 24, 12], np.int64), "sizes")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Resize", ["c", "", "", "sizes"], ["y"], mode="nearest",
                              coordinate_transformation_mode=coord, nearest_mode=nearest)]
    graph = helper.make_graph(nodes, "resize",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                             [2, 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                             [2, 4, 24, 12])], [w, sizes])
    path = tmp_path / "resize.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((2, 3, SIZE, SIZE)).astype(np.float32))
    artifact = compile_model(path, tmp_path / "r.edgert", int_only=True,
                             calib=tmp_path / "calib.npz")
    feed = {"x": rng.standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)}
    tvm_out = Session(artifact, backend="tvm").run(None, feed)[0]
    assert_bit_exact(f"{coord}/{nearest}: numba vs tvm",
                     Session(artifact, backend="numba").run(None, feed)[0], tvm_out)
    fp32 = ort.InferenceSession(str(path)).run(None, feed)[0]
    assert row_cosines(tvm_out, fp32).min() >= MIN_COSINE


def test_resize_linear_has_no_integer_form(tmp_path):
    torch.manual_seed(0)
    path = export_dynamic_batch(Upsample("bilinear").eval(), torch.randn(2, 3, SIZE, SIZE),
                  tmp_path / "up.onnx", "torchscript")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal(
        (2, 3, SIZE, SIZE)).astype(np.float32))
    with pytest.raises(QuantizationError, match="Resize mode 'linear' has no integer form"):
        compile_model(path, tmp_path / "lin.edgert", int_only=True, calib=tmp_path / "calib.npz")


class SoftmaxChannels(nn.Module):
    """A Softmax over the channel axis (YOLOv8's distribution over box bins)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)

    def forward(self, x):
        return torch.softmax(self.conv(x), dim=1)


def test_softmax_over_channels(tmp_path):
    """Softmax over axis 1 -> Transpose, Shiftmax, Transpose back."""
    torch.manual_seed(0)
    path = export_dynamic_batch(SoftmaxChannels().eval(), torch.randn(2, 3, SIZE, SIZE),
                  tmp_path / "sm.onnx", "torchscript")
    graph, cos = compile_and_check(path, tmp_path, "softmax_axis1")
    assert "Shiftmax" in {n.op_type for n in graph.graph.node}
    assert cos >= MIN_COSINE
