"""The examples run end to end (the ViT one in a short training mode)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx

from conftest import REPO


def test_vit_digits_example_trains_exports_and_checks(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "examples" / "vit_digits.py"), "--out", str(tmp_path),
         "--epochs", "10", "--min-accuracy", "0.6"],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "edgert vs onnxruntime" in out.stdout
    model = onnx.load(tmp_path / "vit_digits.onnx")
    assert [i.name for i in model.graph.input] == ["image"]
    data = np.load(tmp_path / "vit_digits_test.npz")
    assert data["images"].shape == (360, 1, 8, 8) and data["labels"].shape == (360,)


def test_embedded_app_example():
    out = subprocess.run([sys.executable, str(REPO / "examples" / "embedded_app.py")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "490 frames, 10 rejected" in out.stdout
