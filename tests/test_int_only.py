"""Integer-only compilation end to end: calibrate, quantize, lower, package, run on every backend.

Whole graphs must be bit-identical between the numpy reference, the numba backend and TVM.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgert import Session
from edgert.artifact import MODEL_MEMBER, read_artifact
from edgert.backends.reference import run_reference
from edgert.compiler import compile_model
from edgert.demo import demo_calib_file, demo_files

from conftest import run_cli
from ophelpers import assert_bit_exact

CALIB = demo_calib_file()


@pytest.fixture(scope="module")
def vit_int(tmp_path_factory):
    return compile_model(demo_files()[0], tmp_path_factory.mktemp("int") / "vit_int.edgert",
                         int_only=True, calib=CALIB)


@pytest.fixture(scope="module")
def encoder_int(model_files, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("enc")
    calib = tmp / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((32, 32, 64)).astype(np.float32))
    return compile_model(model_files["encoder"], tmp / "enc_int.edgert", int_only=True, calib=calib)


def _integer_graph(path) -> onnx.ModelProto:
    return onnx.load_from_string(read_artifact(path).members[MODEL_MEMBER])


def _all_backends_agree(path, feed: dict[str, np.ndarray]) -> np.ndarray:
    want = run_reference(_integer_graph(path), feed)
    for backend in ("tvm", "numba"):
        got = Session(path, backend=backend).run(None, feed)
        for i, (g, w) in enumerate(zip(got, want)):
            assert_bit_exact(f"{backend} output {i}", g, w)
    return want[0]


def test_vit_backends_bit_exact_and_accuracy(vit_int):
    data = np.load(demo_files()[1])
    images, labels = data["images"], data["labels"]
    logits = _all_backends_agree(vit_int, {"image": images})
    fp32 = ort.InferenceSession(str(demo_files()[0])).run(None, {"image": images})[0]
    # regression pins (integer arithmetic: the same count on every machine): 353 of the 360
    # held-out digits (98.06%), as many as the fp32 model gets
    assert int((fp32.argmax(1) == labels).sum()) == 353
    assert int((logits.argmax(1) == labels).sum()) == 353


@pytest.mark.parametrize("batch", [1, 5])
def test_vit_edge_inputs_bit_exact(vit_int, batch):
    """Saturating, all-zero and constant images (all-equal rows into Shiftmax/ILayerNorm)."""
    rng = np.random.default_rng(batch)
    images = rng.uniform(-3, 4, (batch, 1, 8, 8)).astype(np.float32)
    images[0] = 0.0
    if batch > 1:
        images[1] = 1e6
        images[2] = -0.5
    _all_backends_agree(vit_int, {"image": images})


def test_encoder_backends_bit_exact(encoder_int):
    x = np.random.default_rng(7).standard_normal((3, 32, 64)).astype(np.float32)
    _all_backends_agree(encoder_int, {"x": x})


def test_manifest_records_the_quantization(vit_int):
    m = Session(vit_int).manifest
    assert m["compile_options"]["precision"] == "int-only"
    assert m["compile_options"]["calib"] == CALIB.name
    assert m["quantization"]["act_bits"] == "auto"
    assert set(m["quantization"]["activation_dtypes"]) == {"int8", "int16"}


def test_cli_int_only_compile_inspect_and_numba_run(tmp_path):
    model = demo_files()[0]
    refused = run_cli("compile", str(model), "--int-only", "-o", str(tmp_path / "x.edgert"))
    assert refused.returncode == 5 and "needs calibration data" in refused.stderr
    assert not (tmp_path / "x.edgert").exists()
    art = tmp_path / "vit.edgert"
    done = run_cli("compile", str(model), "--int-only", "--calib", str(CALIB), "--act-bits", "8",
                   "-o", str(art))
    assert done.returncode == 0, done.stderr
    info = json.loads(run_cli("inspect", str(art), "--json").stdout)
    assert info["float_ops"] == 0 and info["boundary_ops"] == 2 and info["untyped_tensors"] == 0
    assert {"edgert.Shiftmax", "edgert.ShiftGELU", "edgert.ILayerNorm"} <= set(info["ops"])
    assert info["ops"]["edgert.Requant"]["dtypes"] == ["int32", "int64", "int8"]   # no int16 at 8 bits
    assert info["quantization"]["act_bits"] == "8"
    text = " ".join(run_cli("inspect", str(art)).stdout.split())      # rich wraps long lines
    assert "float ops inside the graph: 0" in text and "act-bits 8" in text
    np.savez(tmp_path / "in.npz", image=np.load(demo_files()[1])["images"][:4])
    ran = run_cli("run", str(art), "-i", str(tmp_path / "in.npz"), "--backend", "numba",
                  "-o", str(tmp_path / "out.npz"))
    assert ran.returncode == 0, ran.stderr
    logits = np.load(tmp_path / "out.npz")["logits"]
    assert logits.shape == (4, 10)
    data = np.load(demo_files()[1])
    every = Session(art).run(None, {"image": data["images"]})[0]
    assert_bit_exact("run --backend numba", logits, every[:4])
    # regression pin (integer arithmetic, the same on every machine): --act-bits 8 gets 351 of
    # the 360 held-out digits (97.5%; 353 with --act-bits auto)
    assert int((every.argmax(1) == data["labels"]).sum()) == 351
    bad = run_cli("compile", str(model), "--int-only", "--calib", str(tmp_path / "none.npz"),
                  "-o", str(tmp_path / "y.edgert"))
    assert bad.returncode == 5 and "does not exist" in bad.stderr
