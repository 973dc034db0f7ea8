"""Calibration feeds samples in chunks the model accepts: one at a time for a static batch of
1 (a torch model exported with ``dynamo=False`` and fixed shapes), up to 32 at a time for a
dynamic batch axis; samples come from an .npz, a directory or (from Python) an iterable."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import edgert
from edgert.artifact import read_artifact
from edgert.compiler import calib_batches
from edgert.compiler.calibrate import BATCH, calibrate, load_samples
from edgert.compiler.check import check_model
from edgert.compiler.pipeline import compile_model
from edgert.errors import InputError
from edgert.model_info import inspect_path


def _export_mlp(path, batch_dim: str | None):
    """A small Linear-GELU-LayerNorm-Linear model exported by the TorchScript exporter; a fixed
    batch of 1, or a dynamic one named ``batch_dim``."""
    torch = pytest.importorskip("torch")
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.LayerNorm(32), nn.Linear(32, 4)).eval()
    dynamic = {"x": {0: batch_dim}, "y": {0: batch_dim}} if batch_dim else None
    torch.onnx.export(model, (torch.randn(1, 16),), str(path), input_names=["x"],
                      output_names=["y"], dynamic_axes=dynamic, dynamo=False, opset_version=17)
    return path


@pytest.fixture(scope="module")
def static_mlp(tmp_path_factory):
    return _export_mlp(tmp_path_factory.mktemp("static") / "mlp_b1.onnx", None)


@pytest.fixture(scope="module")
def dynamic_mlp(tmp_path_factory):
    return _export_mlp(tmp_path_factory.mktemp("dynamic") / "mlp_dyn.onnx", "batch")


def _samples(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)


class _SpySession:
    """Wraps onnxruntime.InferenceSession and records the batch of every run."""

    seen: list[int] = []

    def __init__(self, *args, **kwargs):
        self._sess = _SpySession.real(*args, **kwargs)

    def get_outputs(self):
        return self._sess.get_outputs()

    def run(self, names, feed):
        _SpySession.seen.append(len(feed["x"]))
        return self._sess.run(names, feed)


@pytest.fixture
def spy(monkeypatch):
    import onnxruntime

    _SpySession.real = onnxruntime.InferenceSession
    _SpySession.seen = []
    monkeypatch.setattr(onnxruntime, "InferenceSession", _SpySession)
    return _SpySession.seen


def test_static_batch_1_compiles_int_only_from_16_samples(static_mlp, tmp_path, spy):
    model = onnx.load(static_mlp)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    x = _samples(16)
    np.savez(tmp_path / "calib.npz", x=x)
    checked = check_model(model, "mlp")
    # Feeding 32 (here: all 16) samples at once, as calibration did, is rejected by the model.
    with pytest.raises(InputError, match="do not fit the model"):
        calibrate(checked, load_samples(tmp_path / "calib.npz", ["x"]), batch=BATCH)
    spy.clear()
    art = compile_model(static_mlp, tmp_path / "mlp.edgert", int_only=True,
                        calib=tmp_path / "calib.npz")
    assert spy == [1] * 16                     # one sample per run
    assert inspect_path(art)["float_ops"] == 0
    (y,) = edgert.Session(art).run(None, {"x": x[:1]})
    ref = _SpySession.real(str(static_mlp)).run(None, {"x": x[:1]})[0]
    cos = float((y * ref).sum() / (np.linalg.norm(y) * np.linalg.norm(ref)))
    assert y.shape == (1, 4) and cos > 0.98


def test_dynamic_batch_gets_chunks_of_32(dynamic_mlp, tmp_path, spy):
    model = check_model(onnx.load(dynamic_mlp), "mlp")
    seen_progress = []
    ranges = calibrate(model, [{"x": _samples(70)}, {"x": _samples(5, 1)}],
                       progress=lambda done, total: seen_progress.append((done, total)))
    assert spy == [32, 32, 6, 5]
    assert seen_progress == [(32, 75), (64, 75), (70, 75), (75, 75)]
    want = max(np.abs(_samples(70)).max(), np.abs(_samples(5, 1)).max())
    assert ranges["x"].amax == pytest.approx(float(want))


def test_static_batch_above_1_fills_the_last_chunk(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 3])])
    model = check_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), "m")
    specs = calib_batches.input_specs(model)
    x = np.arange(30, dtype=np.float64).reshape(10, 3)         # float64: cast to float32
    got = list(calib_batches.chunks([{"x": x}], specs, calib_batches.model_batch(specs)))
    assert [len(f["x"]) for f, _, _ in got] == [4, 4, 4]
    assert [real for _, real, _ in got] == [4, 4, 2]
    assert got[-1][0]["x"].dtype == np.float32
    np.testing.assert_array_equal(got[-1][0]["x"], x[[8, 9, 0, 1]].astype(np.float32))
    assert calibrate(model, [{"x": x}])["y"].amax == 29.0


def test_python_api_accepts_an_iterable_of_dicts(dynamic_mlp, tmp_path, spy):
    x = _samples(40)
    per_sample = ({"x": row} for row in x)                        # a generator, one sample each
    art = compile_model(dynamic_mlp, tmp_path / "it.edgert", int_only=True, calib=per_sample)
    assert spy == [1] * 40
    manifest = read_artifact(art).manifest
    assert manifest["compile_options"]["calib"] == "samples given in Python"
    ranges = calibrate(check_model(onnx.load(dynamic_mlp), "m"), [{"x": x[:20]}, {"x": x[20:]}])
    assert ranges["x"].amax == pytest.approx(float(np.abs(x).max()))


@pytest.mark.parametrize("feed, match", [
    ({"x": np.zeros((4, 15), np.float32)}, r"has shape \[4, 15\].*samples must be \['N', 16\]"),
    ({"y": np.zeros((4, 16), np.float32)}, "no array for input 'x'"),
    (np.zeros((4, 16), np.float32), "expected a dict"),
])
def test_samples_that_cannot_fit_name_the_input(dynamic_mlp, feed, match):
    model = check_model(onnx.load(dynamic_mlp), "m")
    with pytest.raises(InputError, match=match):
        calibrate(model, [feed])
