"""A flatten that the dynamo exporter writes as index arithmetic compiles int-only.

When the example input's strides read as both contiguous and channels-last (a ``[N, 1, H, W]``
tensor with strides ``(H*W, 1, W, 1)``, as ``torch.from_numpy`` can give), ``torch.onnx.export(
dynamo=True)`` turns ``flatten(avgpool(x), 1)`` into ``aten.as_strided``: ``Range(0, batch)``,
``Mul``, ``Unsqueeze``, ``Add``, a ``Gather`` over the computed indices and a ``Reshape``. With a
dynamic batch the ``Range`` cannot fold; TVM's own ``Range`` converter then made a
data-dependent shape variable that its build rejected, fp32 and int-only alike
(``compiler/standard_int_converters.py`` has the one used now; the integer graph keeps the same
int64 index arithmetic, so the int-only compile covers both).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgert import Session
from edgert.artifact import MODEL_MEMBER, read_artifact
from edgert.compiler import compile_model
from edgert.model_info import describe_model

from ophelpers import assert_bit_exact, row_cosines

torch = pytest.importorskip("torch")
nn = torch.nn

MIN_COSINE = 0.99


def _export(path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 10)).eval()
    x = torch.zeros(2, 64).as_strided((2, 1, 8, 8), (64, 1, 8, 1))   # also channels-last
    with torch.no_grad():
        torch.onnx.export(model, (x,), dynamo=True, input_names=["x"], output_names=["y"],
                          verbose=False, dynamic_shapes=({0: torch.export.Dim("batch")},)
                          ).save(str(path), external_data=False)


def test_as_strided_flatten_compiles_int_only(tmp_path):
    path = tmp_path / "model.onnx"
    _export(path)
    ops = [n.op_type for n in onnx.load(path).graph.node]
    assert {"Range", "Gather"} <= set(ops), ops          # the exporter's index arithmetic
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((4, 1, 8, 8)).astype(np.float32))
    x = rng.standard_normal((3, 1, 8, 8)).astype(np.float32)
    want = ort.InferenceSession(str(path)).run(None, {"x": x})[0]

    art = compile_model(path, tmp_path / "int.edgert", int_only=True,
                        calib=tmp_path / "calib.npz")
    model = onnx.load_from_string(read_artifact(art).members[MODEL_MEMBER])
    assert {"Range", "Gather"} <= {n.op_type for n in model.graph.node}
    info = describe_model(model)
    assert info["float_ops"] == 0, info["float_nodes"]
    got = Session(art).run(None, {"x": x})[0]
    assert_bit_exact("as_strided flatten numba vs tvm",
                     Session(art, backend="numba").run(None, {"x": x})[0], got)
    assert row_cosines(got, want).min() >= MIN_COSINE
