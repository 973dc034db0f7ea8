"""Integer forms of two layers PaddlePaddle's exports hold (PP-OCR's detection and recognition
models, ``tests/test_wheel_models.py``): a ``ConvTranspose`` (the detector's stride-2
upsampling head) and a LayerNorm written out as ReduceMean / Sub / Pow / ReduceMean / Add /
Sqrt / Div / Mul / Add in an opset-12 graph (SVTR blocks), which the fusion ahead of
quantization leaves alone below opset 13 and the quantizer maps to ``ILayerNorm``
(``compiler/quantize/layernorm.py``).

Tiny torch models, exported by the TorchScript exporter (opset 12: PyTorch writes its
``nn.LayerNorm`` out there as Paddle does), compiled ``--int-only``: no float op inside the
graph, the numba backend equals the TVM build bit for bit, cosine to onnxruntime fp32 per
sample >= :data:`MIN_COSINE`. Nodes of an opset-12 graph are written in the integer graph's
opset; a Softmax whose pre-13 meaning differs (several axes flattened) is refused.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgert import Session
from edgert.artifact import MODEL_MEMBER, read_artifact
from edgert.compiler import compile_model
from edgert.errors import QuantizationError
from edgert.model_info import describe_model

from ophelpers import assert_bit_exact, row_cosines

torch = pytest.importorskip("torch")
nn = torch.nn

MIN_COSINE = 0.99


class Upsampler(nn.Module):
    """Conv, then two transposed convolutions: PP-OCR det's head (kernel 2, stride 2) and a
    grouped one with kernel 3, stride 2, padding 1 and output_padding 1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 6, 2, stride=2)
        self.up2 = nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1, groups=2)

    def forward(self, x):
        return self.up2(torch.relu(self.up(torch.relu(self.conv(x)))))


class NormBlock(nn.Module):
    """Linear, LayerNorm (gamma and beta away from 1 and 0), Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.norm, self.b = nn.Linear(32, 32), nn.LayerNorm(32), nn.Linear(32, 16)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        return self.b(self.norm(self.a(x)))


CASES = {"conv-transpose": (Upsampler, (1, 3, 8, 8), "ConvTranspose", "ConvInteger"),
         "decomposed-layernorm": (NormBlock, (2, 6, 32), "Pow", "ILayerNorm")}


@pytest.mark.parametrize("case", list(CASES))
def test_integer_form_bit_exact_and_close(case, tmp_path):
    make, shape, fp32_op, int_op = CASES[case]
    torch.manual_seed(0)
    module, path = make().eval(), tmp_path / "model.onnx"
    with torch.no_grad():
        torch.onnx.export(module, (torch.randn(*shape),), str(path), dynamo=False,
                          opset_version=12, input_names=["x"], output_names=["y"])
    assert fp32_op in {n.op_type for n in onnx.load(path).graph.node}
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((8, *shape[1:])).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=calib)
    art = compile_model(path, tmp_path / "model.edgert", int_only=True,
                        calib=tmp_path / "calib.npz")
    model = onnx.load_from_string(read_artifact(art).members[MODEL_MEMBER])
    info = describe_model(model)
    assert info["float_ops"] == 0, info["float_nodes"]
    assert int_op in {n.op_type for n in model.graph.node}
    x = rng.standard_normal(shape).astype(np.float32)
    want = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    got = Session(art).run(None, {"x": x})[0]
    assert_bit_exact(f"{case} numba vs tvm", Session(art, backend="numba").run(None, {"x": x})[0],
                     got)
    cos = row_cosines(got, want)
    print(f"\n{case}: cosine to fp32 {cos.min():.5f}")
    assert got.shape == want.shape and cos.min() >= MIN_COSINE


def test_opset12_softmax_over_flattened_axes_is_refused(tmp_path):
    """Below opset 13, ``Softmax(axis=1)`` of a [1, 3, 8] tensor normalizes over 24 values (the
    input flattened to 2-D); Shiftmax normalizes rows, so the quantizer refuses it, naming it."""
    rng = np.random.default_rng(0)
    w = onnx.numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["h"]),
         onnx.helper.make_node("Softmax", ["h"], ["y"], axis=1)], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 8])], [w])
    path = tmp_path / "softmax12.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 12)],
                                     ir_version=7), path)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((4, 3, 8)).astype(np.float32))
    with pytest.raises(QuantizationError, match="below opset 13 over more than the last axis"):
        compile_model(path, tmp_path / "m.edgert", int_only=True, calib=tmp_path / "calib.npz")
