"""Integer-only CNN layers: MaxPool and AveragePool on every backend, and the activations of the
torchvision classifiers in one small network (HardSwish, HardSigmoid and Sigmoid gates of
squeeze-and-excitation, SiLU, Tanh, a split / concat / channel shuffle), by both exporters.

The torchvision models themselves are in ``tests/test_zoo.py``. ``--int-only`` must leave no
float op inside the graph, the numba backend must equal TVM and the numpy reference bit for bit,
and the logits must stay close to onnxruntime's fp32.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgert import Session
from edgert.artifact import MODEL_MEMBER, read_artifact
from edgert.backends.reference import run_reference
from edgert.compiler import compile_model
from edgert.model_info import describe_model

from ophelpers import assert_bit_exact, integer_model, row_cosines, export_dynamic_batch

torch = pytest.importorskip("torch")
nn = torch.nn

MIN_COSINE = 0.98


MAXPOOLS = [   # attributes of the integer MaxPool nodes checked on every backend
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
    {"kernel_shape": [2, 2], "strides": [2, 2]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1},
    {"kernel_shape": [3, 2], "strides": [2, 1], "pads": [1, 0, 1, 1], "dilations": [2, 1]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"},
]


def test_integer_maxpool_numba_tvm_reference(tmp_path):
    """Standard ``MaxPool`` on int8 (ONNX allows no int16; negative values and -128 next to the
    padding, which must take no part): numba and TVM equal ``onnx.reference`` bit for bit."""
    from onnx import TensorProto, helper

    nodes, outputs = [], []
    for i, attrs in enumerate(MAXPOOLS):
        for x, elem in (("x8", TensorProto.INT8), ("y8", TensorProto.INT8)):
            nodes.append(helper.make_node("MaxPool", [x], [f"{x}_pool{i}"], **attrs))
            outputs.append(helper.make_tensor_value_info(f"{x}_pool{i}", elem, None))
    inputs = [helper.make_tensor_value_info("x8", TensorProto.INT8, ["b", 3, 7, 8]),
              helper.make_tensor_value_info("y8", TensorProto.INT8, ["b", 3, 7, 8])]
    rng = np.random.default_rng(4)
    feed = {"x8": rng.integers(-128, 0, (2, 3, 7, 8)).astype(np.int8),
            "y8": rng.integers(-128, 128, (2, 3, 7, 8)).astype(np.int8)}
    feed["x8"][0, 0, :, 0] = -128
    want = run_reference(integer_model(nodes, inputs, outputs, [], check=False), feed)
    outputs = [helper.make_tensor_value_info(o.name, o.type.tensor_type.elem_type,
                                             ["b", *w.shape[1:]]) for o, w in zip(outputs, want)]
    model = integer_model(nodes, inputs, outputs, [])
    onnx.save(model, tmp_path / "maxpool.onnx")
    artifact = compile_model(tmp_path / "maxpool.onnx", tmp_path / "maxpool.edgert")
    for backend in ("tvm", "numba"):
        got = Session(artifact, backend=backend).run(None, feed)
        for out, g, w in zip(outputs, got, want):
            assert_bit_exact(f"{backend} {out.name}", g, w)


class AvgPoolNet(nn.Module):
    """Both kinds of AveragePool with an integer form: no padding, and padding counted."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.pool1 = nn.AvgPool2d(2)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool2 = nn.AvgPool2d(3, stride=2, padding=1)          # count_include_pad=True
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = self.pool1(torch.relu(self.conv1(x)))
        x = self.pool2(torch.relu(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_average_pool(tmp_path, exporter):
    """``AveragePool`` as a depthwise all-ones ``ConvInteger`` + Requant: no float op, close to
    fp32, numba == TVM."""
    torch.manual_seed(0)
    size = 16
    model = AvgPoolNet().eval()
    x = torch.randn(2, 3, size, size)
    path = export_dynamic_batch(model, x, tmp_path / "avg.onnx", exporter)
    assert "AveragePool" in {n.op_type for n in onnx.load(path).graph.node}
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((8, 3, size, size)).astype(np.float32))
    artifact = compile_model(path, tmp_path / "avg.edgert", int_only=True,
                             calib=tmp_path / "calib.npz")
    info = describe_model(onnx.load_from_string(read_artifact(artifact).members[MODEL_MEMBER]))
    assert info["float_ops"] == 0, info["float_nodes"]
    feed = {"x": rng.standard_normal((4, 3, size, size)).astype(np.float32)}
    fp32 = ort.InferenceSession(str(path)).run(None, feed)[0]
    tvm_out = Session(artifact, backend="tvm").run(None, feed)[0]
    assert_bit_exact("numba vs tvm", Session(artifact, backend="numba").run(None, feed)[0],
                     tvm_out)
    assert row_cosines(tvm_out, fp32).min() >= MIN_COSINE


class SqueezeExcite(nn.Module):
    """torchvision's squeeze-and-excitation: ``x * gate(fc2(relu(fc1(mean(x)))))``."""

    def __init__(self, channels: int, gate: nn.Module) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // 2, 1)
        self.fc2 = nn.Conv2d(channels // 2, channels, 1)
        self.gate = gate

    def forward(self, x):
        s = nn.functional.adaptive_avg_pool2d(x, 1)
        return x * self.gate(self.fc2(torch.relu(self.fc1(s))))


class ActivationNet(nn.Module):
    """The activations of the torchvision classifiers on a few small layers: HardSwish and a
    HardSigmoid gate (MobileNetV3), SiLU and a Sigmoid gate (EfficientNet), a split, a concat of
    two scales and a channel shuffle (ShuffleNetV2), and a Tanh."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 2, 1)
        self.se1 = SqueezeExcite(16, nn.Hardsigmoid())
        self.conv2 = nn.Conv2d(16, 16, 3, 1, 1, groups=16)
        self.se2 = SqueezeExcite(16, nn.Sigmoid())
        self.conv3 = nn.Conv2d(16, 16, 1)
        self.conv4 = nn.Conv2d(8, 8, 3, 1, 1)
        self.conv5 = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16 * 4, 10)
        for m in self.modules():           # a signal of size ~1 through the layers
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def forward(self, x):
        x = self.se1(nn.functional.hardswish(self.conv1(x)))
        x = self.se2(nn.functional.silu(self.conv2(x)))
        a, b = self.conv3(x).chunk(2, dim=1)
        x = torch.cat([a, torch.relu(self.conv4(b))], 1)
        n, c, h, w = x.shape
        x = x.reshape(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        x = torch.tanh(self.conv5(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 2), 1))


ACTIVATION_OPS = {"HardSwish", "HardSigmoid", "Sigmoid", "Mul", "Tanh", "Concat", "Transpose"}
ACTIVATION_MIN_CENTERED = 0.9877   # measured 0.98887 (both exporters), less 10 % of 1 - cos


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_activations_and_gates(tmp_path, exporter):
    """HardSwish, HardSigmoid / Sigmoid gates (``IntTable``, int16) times activations (exact
    integer products), SiLU as ``x * sigmoid(x)``, Split or Slice, Concat of two scales, the
    channel shuffle and Tanh: no float op, numba == TVM == the numpy reference bit for bit,
    logits close to fp32 (the cosine, and the cosine of the logits minus their batch mean: the
    part that depends on the image)."""
    torch.manual_seed(0)
    size = 16
    model = ActivationNet().eval()
    path = export_dynamic_batch(model, torch.randn(2, 3, size, size), tmp_path / "act.onnx", exporter)
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert ACTIVATION_OPS <= ops and ops & {"Split", "Slice"}, ops
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((8, 3, size, size)).astype(np.float32))
    artifact = compile_model(path, tmp_path / "act.edgert", int_only=True,
                             calib=tmp_path / "calib.npz")
    int_model = onnx.load_from_string(read_artifact(artifact).members[MODEL_MEMBER])
    info = describe_model(int_model)
    assert info["float_ops"] == 0, info["float_nodes"]
    assert {n.op_type for n in int_model.graph.node} >= {"IntTable", "Mul", "Concat"}
    feed = {"x": rng.standard_normal((4, 3, size, size)).astype(np.float32)}
    fp32 = ort.InferenceSession(str(path)).run(None, feed)[0]
    tvm_out = Session(artifact, backend="tvm").run(None, feed)[0]
    numba_out = Session(artifact, backend="numba").run(None, feed)[0]
    assert_bit_exact("numba vs tvm", numba_out, tvm_out)
    assert_bit_exact("reference vs tvm", run_reference(int_model, feed)[0], tvm_out)
    cos = row_cosines(tvm_out, fp32)
    centered = row_cosines(tvm_out - fp32.mean(0), fp32 - fp32.mean(0))
    print(f"{exporter}: cosine {np.round(cos, 5).tolist()}, centered {np.round(centered, 5)}")
    assert cos.min() >= MIN_COSINE and centered.min() >= ACTIVATION_MIN_CENTERED
