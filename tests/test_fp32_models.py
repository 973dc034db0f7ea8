"""The compiled fp32 path matches onnxruntime on the same ONNX file (relative error <= 1e-4)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import edgert
from edgert.compiler import compile_model

from conftest import random_input, rel_err

MODELS = ["vit", "encoder", "mlp", "cnn", "bn_cnn"]


@pytest.fixture(scope="module")
def compiled(model_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp32")
    return {name: compile_model(model_files[name], out / f"{name}.edgert") for name in MODELS}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("batch", [1, 4])
def test_matches_onnxruntime(name, batch, model_files, compiled):
    sess = edgert.Session(compiled[name])
    ref = ort.InferenceSession(str(model_files[name]), providers=["CPUExecutionProvider"])
    [spec] = sess.get_inputs()
    assert isinstance(spec.shape[0], str), "the batch axis must stay symbolic"
    if name == "vit":
        x = np.random.default_rng(batch).uniform(0, 1, (batch, 1, 8, 8)).astype(np.float32)
    else:
        x = random_input(spec.shape, batch, seed=batch)
    ours = sess.run(None, {spec.name: x})
    theirs = ref.run(None, {spec.name: x})
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert rel_err(a, b) <= 1e-4


def test_vit_accuracy_on_held_out_digits(compiled):
    from edgert.demo import demo_files

    data = np.load(demo_files()[1])
    [logits] = edgert.Session(compiled["vit"]).run(None, {"image": data["images"]})
    # regression pin: 353 of the 360 held-out digits (98.06%, onnxruntime's count too); fp32
    # rounding differs between machines, so no fewer rather than exactly
    assert int((logits.argmax(1) == data["labels"]).sum()) >= 353
