"""Integer-only CNNs as PyTorch users export them: ResNet-18 and MobileNetV2, by both exporters.

The two architectures are written out here layer for layer as torchvision defines them (the
torchvision wheel reachable here is a CUDA build that does not load next to the CPU torch), with
torchvision's initialization. Random weights, eval mode, dynamic batch (and resnet18 with a
static batch of 1), 64x64 inputs:
- BatchNorm statistics are measured on random images (non-trivial means and variances that keep
  the signal's size through the depth), its affine parameters random around (1, 0); the last
  BatchNorm of each residual branch is scaled by 0.7. A random network is otherwise chaotic
  (fp32 MobileNetV2 loses 0.04 of logit cosine to 1 % input noise, so no 8-bit graph could meet
  a cosine bound); :func:`test_fp32_model_is_stable` checks that the models tested are not, and
  that their logits still depend on the input.
- ``--int-only`` must leave no float op inside the graph, the logits must have cosine >= 0.98
  to onnxruntime's fp32, and the numba backend must equal TVM bit for bit.
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

from ophelpers import assert_bit_exact, integer_model

torch = pytest.importorskip("torch")
nn = torch.nn

SIZE = 64                  # input height and width
CALIB_SAMPLES = 8
MIN_COSINE = 0.98
RESIDUAL_GAMMA = 0.7       # scale of the last BatchNorm of a residual branch


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18(nn.Module):
    """torchvision.models.resnet18."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def conv_bn_relu6(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """torchvision's MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = int(round(cin * expand))
        self.use_res = stride == 1 and cin == cout
        layers = [] if expand == 1 else [conv_bn_relu6(cin, hidden, 1)]
        layers += [conv_bn_relu6(hidden, hidden, 3, stride, hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision.models.mobilenet_v2 (width 1.0)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        setting = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                   (6, 160, 3, 2), (6, 320, 1, 1)]
        feats, cin = [conv_bn_relu6(3, 32, stride=2)], 32
        for t, c, n, s in setting:
            for i in range(n):
                feats.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        feats.append(conv_bn_relu6(cin, 1280, 1))
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


ARCHS = {"resnet18": ResNet18, "mobilenet_v2": MobileNetV2}


def random_model(arch: str, seed: int = 0):
    """torchvision's initialization, BatchNorm statistics measured on random images, eval mode."""
    torch.manual_seed(seed)
    model = ARCHS[arch]()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None                      # a plain average over the batches
                m.weight.uniform_(0.75, 1.25)
                m.bias.uniform_(-0.2, 0.2)
        model.train()
        model(torch.randn(16, 3, SIZE, SIZE))
        for m in model.modules():
            if isinstance(m, (BasicBlock, InvertedResidual)):
                last = [b for b in m.modules() if isinstance(b, nn.BatchNorm2d)][-1]
                last.weight.mul_(RESIDUAL_GAMMA)
                last.bias.mul_(RESIDUAL_GAMMA)
    return model.eval()


def export(model, path, dynamo: bool, static_batch: bool = False):
    """ONNX by ``torch.onnx.export`` (dynamo or TorchScript, opset 17) with a dynamic batch, or
    a static batch of 1 (TorchScript)."""
    x = torch.randn(1 if static_batch else 2, 3, SIZE, SIZE)
    with torch.no_grad():
        if static_batch:
            torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"],
                              output_names=["y"], opset_version=17)
        elif dynamo:
            program = torch.onnx.export(model, (x,), dynamo=True, input_names=["x"],
                                        output_names=["y"], verbose=False,
                                        dynamic_shapes=({0: torch.export.Dim("batch")},))
            program.save(str(path), external_data=False)
        else:
            torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"],
                              output_names=["y"], opset_version=17,
                              dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return path


def cosines(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row (one image's logits)."""
    g, w = got.astype(np.float64), want.astype(np.float64)
    return (g * w).sum(1) / np.linalg.norm(g, axis=1) / np.linalg.norm(w, axis=1)


CASES = [(arch, exporter) for arch in ARCHS for exporter in ("torchscript", "dynamo")]
CASES.append(("resnet18", "torchscript-batch1"))        # a static batch of 1


@pytest.fixture(scope="module", params=CASES, ids=[f"{a}-{e}" for a, e in CASES])
def cnn(request, tmp_path_factory):
    arch, exporter = request.param
    tmp = tmp_path_factory.mktemp(f"{arch}_{exporter}")
    onnx_path = export(random_model(arch), tmp / f"{arch}.onnx", exporter == "dynamo",
                       static_batch=exporter.endswith("batch1"))
    rng = np.random.default_rng(0)
    calib = tmp / "calib.npz"
    np.savez(calib, x=rng.standard_normal((CALIB_SAMPLES, 3, SIZE, SIZE)).astype(np.float32))
    artifact = compile_model(onnx_path, tmp / f"{arch}.edgert", int_only=True, calib=calib)
    return arch, exporter, onnx_path, artifact


def test_no_float_ops(cnn):
    *_, artifact = cnn
    info = describe_model(onnx.load_from_string(read_artifact(artifact).members[MODEL_MEMBER]))
    assert info["float_ops"] == 0, info["float_nodes"]
    assert info["boundary_ops"] == 2         # the input's quantize, the logits' dequantize


def test_logits_match_fp32_and_backends_agree(cnn):
    arch, exporter, onnx_path, artifact = cnn
    x = np.random.default_rng(1).standard_normal((3, 3, SIZE, SIZE)).astype(np.float32)
    runs = [x[i:i + 1] for i in range(len(x))] if exporter.endswith("batch1") else [x]

    def run(f):
        return np.concatenate([f(part) for part in runs])

    fp32 = run(lambda v: ort.InferenceSession(str(onnx_path)).run(None, {"x": v})[0])
    tvm_out = run(lambda v: Session(artifact, backend="tvm").run(None, {"x": v})[0])
    numba_out = run(lambda v: Session(artifact, backend="numba").run(None, {"x": v})[0])
    assert_bit_exact(f"{arch}/{exporter} numba vs tvm", numba_out, tvm_out)
    cos = cosines(tvm_out, fp32)
    centered = cosines(tvm_out - fp32.mean(0), fp32 - fp32.mean(0))
    print(f"{arch} {exporter}: logit cosine to fp32 {np.round(cos, 4).tolist()}, "
          f"of the logits minus their batch mean {np.round(centered, 4).tolist()}")
    assert cos.min() >= MIN_COSINE, cos


@pytest.mark.parametrize("arch", list(ARCHS))
def test_fp32_model_is_stable(arch):
    """The random models are not chaotic: 1 % input noise keeps the fp32 logits' cosine >= 0.995
    (so the cosine bound above measures the quantization, not the model's sensitivity)."""
    model = random_model(arch)
    x = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        clean = model(x).numpy()
        noisy = model(x + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3)))
    varied = clean - clean.mean(0)                  # what differs from image to image
    assert cosines(noisy.numpy(), clean).min() >= 0.995
    assert np.abs(varied).mean() >= 0.05 * np.abs(clean).mean()   # logits depend on the input


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
    path = tmp_path / "avg.onnx"
    with torch.no_grad():
        if exporter == "dynamo":
            torch.onnx.export(model, (x,), dynamo=True, input_names=["x"], output_names=["y"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},),
                              verbose=False).save(str(path), external_data=False)
        else:
            torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"],
                              output_names=["y"], opset_version=17,
                              dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
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
    assert cosines(tvm_out, fp32).min() >= MIN_COSINE
