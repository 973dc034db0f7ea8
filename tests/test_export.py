"""Export from PyTorch: dynamic batch axis, the Python function and the CLI command."""

from __future__ import annotations

import onnx
import pytest

from conftest import run_cli

torch = pytest.importorskip("torch")


def _batch_dim(path):
    model = onnx.load(path)
    return model.graph.input[0].type.tensor_type.shape.dim[0]


def test_export_dynamic_batch_even_from_batch_one(tmp_path):
    from edgert.compiler import export

    path = export(torch.nn.Linear(4, 3), torch.randn(1, 4), tmp_path / "lin.onnx")
    dim = _batch_dim(path)
    assert dim.dim_param and not dim.dim_value
    assert [i.name for i in onnx.load(path).graph.input] == ["input_0"]


def test_export_static_batch(tmp_path):
    from edgert.compiler import export

    path = export(torch.nn.Linear(4, 3), torch.randn(3, 4), tmp_path / "lin.onnx", dynamic_batch=False)
    assert _batch_dim(path).dim_value == 3


def test_cli_export_with_factory_file(tmp_path):
    factory = tmp_path / "factory.py"
    factory.write_text(
        "import torch\n"
        "def make():\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU()), (torch.randn(2, 6),)\n"
    )
    out = run_cli("export", f"{factory}:make", "-o", str(tmp_path / "m.onnx"))
    assert out.returncode == 0, out.stderr
    assert _batch_dim(tmp_path / "m.onnx").dim_param


def test_cli_export_bad_factory(tmp_path):
    out = run_cli("export", "no_such_module_xyz:make", "-o", str(tmp_path / "m.onnx"))
    assert out.returncode == 1 and "cannot import 'no_such_module_xyz'" in out.stderr
    assert not (tmp_path / "m.onnx").exists()
