"""torchvision's classification zoo compiles ``--int-only`` with no float op inside the graph.

The ten models of :data:`edgert.models.torchvision_zoo.ZOO` with random weights that behave like
trained ones (:func:`~edgert.models.torchvision_zoo.random_model`), 64x64 inputs, exported by
both PyTorch exporters (TorchScript opset 17 and dynamo) with a dynamic batch and with a static
batch of 1, calibrated on 4 random images (one at a time for the static batch), compared on 4
other random images. For every case:

- ``edgert inspect``'s ``float_ops`` of the artifact's graph is 0 (only the input's quantize and
  the logits' dequantize at the boundary);
- the numba backend equals the TVM build bit for bit;
- the logits' cosine to onnxruntime fp32 is >= 0.98 for every image, and the cosine of the
  logits minus their batch mean (the part that depends on the image; some random models' logits
  barely do, so the plain cosine alone is too easy) is at least the measured minimum less 10 %
  of ``1 - cos`` (:data:`MIN_CENTERED`, measured values in ``docs/models.md``);
- the fp32 model is not chaotic: 1 % input noise keeps its logits' cosine >= 0.995, so the
  bounds above measure the quantization, not the model's sensitivity.

The default run covers every op kind of the zoo and both exporters in three models that fit the
CI budget (:data:`DEFAULT`: ResNet-18 by dynamo with a static batch of 1; MobileNetV3-small,
HardSwish / HardSigmoid / squeeze-and-excitation products, and ShuffleNetV2, Slice on a shape
subgraph / Concat of two scales / channel shuffle / MaxPool, both by TorchScript with a dynamic
batch; EfficientNet's Sigmoid and SiLU, and dynamo's Split, are in
``tests/test_int_cnn.py::test_activations_and_gates``). ``EDGERT_ZOO=all`` runs all 40 cases
(about 40 minutes on two cores).
"""

from __future__ import annotations

import functools
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgert import Session
from edgert.artifact import MODEL_MEMBER, read_artifact
from edgert.compiler import compile_model
from edgert.model_info import describe_model
from edgert.models import torchvision_zoo as zoo

from ophelpers import assert_bit_exact, row_cosines

torch = pytest.importorskip("torch")

SIZE = 64
CALIB_SAMPLES = 4
EVAL_IMAGES = 4
MIN_COSINE = 0.98
EXPORTERS = ("torchscript", "dynamo")
BATCHES = ("dynamic", "1")
DEFAULT = {("resnet18", "dynamo", "1"), ("mobilenet_v3_small", "torchscript", "dynamic"),
           ("shufflenet_v2_x1_0", "torchscript", "dynamic")}
RUN_ALL = os.environ.get("EDGERT_ZOO") == "all"

# Cosine of the logits minus their batch mean, min over the 4 images: the measured value
# (EDGERT_ZOO=all, docs/models.md) less 10 % of 1 - cos. Keyed by (model, exporter, batch).
MEASURED_CENTERED: dict[tuple[str, str, str], float] = {
    ("mobilenet_v2", "torchscript", "dynamic"): 0.9030,
    ("mobilenet_v2", "torchscript", "1"): 0.9030,
    ("mobilenet_v2", "dynamo", "dynamic"): 0.9028,
    ("mobilenet_v2", "dynamo", "1"): 0.9028,
    ("mobilenet_v3_small", "torchscript", "dynamic"): 0.9417,
    ("mobilenet_v3_small", "torchscript", "1"): 0.9417,
    ("mobilenet_v3_small", "dynamo", "dynamic"): 0.9417,
    ("mobilenet_v3_small", "dynamo", "1"): 0.9417,
    ("mobilenet_v3_large", "torchscript", "dynamic"): 0.8100,
    ("mobilenet_v3_large", "torchscript", "1"): 0.8100,
    ("mobilenet_v3_large", "dynamo", "dynamic"): 0.8118,
    ("mobilenet_v3_large", "dynamo", "1"): 0.8118,
    ("resnet18", "torchscript", "dynamic"): 0.9764,
    ("resnet18", "torchscript", "1"): 0.9764,
    ("resnet18", "dynamo", "dynamic"): 0.9764,
    ("resnet18", "dynamo", "1"): 0.9764,
    ("resnet50", "torchscript", "dynamic"): 0.9094,
    ("resnet50", "torchscript", "1"): 0.9094,
    ("resnet50", "dynamo", "dynamic"): 0.9106,
    ("resnet50", "dynamo", "1"): 0.9106,
    ("efficientnet_b0", "torchscript", "dynamic"): 0.3708,
    ("efficientnet_b0", "torchscript", "1"): 0.3708,
    ("efficientnet_b0", "dynamo", "dynamic"): 0.4222,
    ("efficientnet_b0", "dynamo", "1"): 0.4222,
    ("squeezenet1_1", "torchscript", "dynamic"): 0.8294,
    ("squeezenet1_1", "torchscript", "1"): 0.8294,
    ("squeezenet1_1", "dynamo", "dynamic"): 0.8294,
    ("squeezenet1_1", "dynamo", "1"): 0.8294,
    ("shufflenet_v2_x1_0", "torchscript", "dynamic"): 0.9254,
    ("shufflenet_v2_x1_0", "torchscript", "1"): 0.9254,
    ("shufflenet_v2_x1_0", "dynamo", "dynamic"): 0.9268,
    ("shufflenet_v2_x1_0", "dynamo", "1"): 0.9268,
    ("regnet_x_400mf", "torchscript", "dynamic"): 0.8746,
    ("regnet_x_400mf", "torchscript", "1"): 0.8746,
    ("regnet_x_400mf", "dynamo", "dynamic"): 0.8670,
    ("regnet_x_400mf", "dynamo", "1"): 0.8670,
    ("mnasnet0_5", "torchscript", "dynamic"): 0.8802,
    ("mnasnet0_5", "torchscript", "1"): 0.8802,
    ("mnasnet0_5", "dynamo", "dynamic"): 0.8815,
    ("mnasnet0_5", "dynamo", "1"): 0.8815,
}
MIN_CENTERED = {case: 1 - 1.1 * (1 - cos) for case, cos in MEASURED_CENTERED.items()}


def _case(model: str, exporter: str, batch: str):
    skip = pytest.mark.skipif(not RUN_ALL and (model, exporter, batch) not in DEFAULT,
                              reason="one of the 40 zoo cases outside the default subset: "
                                     "set EDGERT_ZOO=all to run it (about 40 minutes)")
    return pytest.param(model, exporter, batch, marks=skip, id=f"{model}-{exporter}-{batch}")


CASES = [_case(m, e, b) for m in zoo.ZOO for e in EXPORTERS for b in BATCHES]


@functools.lru_cache(maxsize=2)
def _model(name: str):
    return zoo.random_model(name, size=SIZE)


def _assert_stable(model) -> None:
    """1 % input noise keeps the fp32 logits' cosine >= 0.995, and they depend on the input."""
    x = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    noise = 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        clean, noisy = model(x).numpy(), model(x + noise).numpy()
    assert row_cosines(noisy, clean).min() >= 0.995
    assert np.abs(clean - clean.mean(0)).max() > 0


@pytest.mark.slow
@pytest.mark.parametrize("name, exporter, batch", CASES)
def test_zoo_int_only(tmp_path, name, exporter, batch):
    model = _model(name)
    _assert_stable(model)
    path = zoo.export(model, tmp_path / f"{name}.onnx", dynamo=exporter == "dynamo",
                      static_batch=batch == "1", size=SIZE)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz",
             x=rng.standard_normal((CALIB_SAMPLES, 3, SIZE, SIZE)).astype(np.float32))
    artifact = compile_model(path, tmp_path / f"{name}.edgert", int_only=True,
                             calib=tmp_path / "calib.npz")
    info = describe_model(onnx.load_from_string(read_artifact(artifact).members[MODEL_MEMBER]))
    assert info["float_ops"] == 0, info["float_nodes"]
    assert info["boundary_ops"] == 2         # the input's quantize, the logits' dequantize

    x = np.random.default_rng(1).standard_normal((EVAL_IMAGES, 3, SIZE, SIZE)).astype(np.float32)
    parts = [x[i:i + 1] for i in range(len(x))] if batch == "1" else [x]
    fp32_session = ort.InferenceSession(str(path))
    sessions = {b: Session(artifact, backend=b) for b in ("tvm", "numba")}
    fp32 = np.concatenate([fp32_session.run(None, {"x": p})[0] for p in parts])
    out = {b: np.concatenate([s.run(None, {"x": p})[0] for p in parts])
           for b, s in sessions.items()}
    assert_bit_exact(f"{name}/{exporter}/{batch} numba vs tvm", out["numba"], out["tvm"])
    cos = row_cosines(out["tvm"], fp32)
    centered = row_cosines(out["tvm"] - fp32.mean(0), fp32 - fp32.mean(0))
    print(f"\nZOO | {name} | {exporter} | {batch} | {info['float_ops']} | {cos.min():.4f} | "
          f"{centered.min():.4f} |")
    assert cos.min() >= MIN_COSINE, cos
    assert centered.min() >= MIN_CENTERED[(name, exporter, batch)], centered
