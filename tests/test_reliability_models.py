"""Bad model files: each is refused with a typed exception from the API and one line plus its
exit code from the CLI, and nothing is left in the output folder. All but the unsupported op
fail in the check stage, before TVM."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgert.errors import ModelError, UnsupportedOpError, UnsupportedOpsetError

from conftest import run_cli


def tiny_model(opset: int = 17) -> onnx.ModelProto:
    """x [b, 8] -> MatMul (8 x 4) -> Relu -> y [b, 4]."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
         helper.make_node("Relu", ["h"], ["y"], name="relu")], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def _truncated(p: Path) -> Path:
    data = tiny_model().SerializeToString()
    p.write_bytes(data[:len(data) // 2])
    return p


def _not_onnx(p: Path) -> Path:
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    return p


def _checker_fails(p: Path) -> Path:
    m = tiny_model()
    m.graph.node[1].input[0] = "undefined_tensor"
    return _save(m, p)


def _unsupported_op(p: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Det", ["x"], ["y"], name="det")], "det",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), p)


def _dynamic_shape(p: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Cast", ["s"], ["si"], to=TensorProto.INT64, name="cast"),
         helper.make_node("Reshape", ["x", "si"], ["y"], name="reshape")], "dyn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 8]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["d0", "d1"])])
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), p)


def _empty(p: Path) -> Path:
    p.write_bytes(b"")
    return p


def _directory(p: Path) -> Path:
    p.mkdir()
    return p


# case -> (make the file, exception type, CLI exit code, message pattern)
CASES: dict[str, tuple[Callable[[Path], Path], type, int, str]] = {
    "truncated": (_truncated, ModelError, 3, "not a readable ONNX model|not an ONNX model"),
    "not_onnx": (_not_onnx, ModelError, 3, "not a readable ONNX model|not an ONNX model"),
    "checker_fails": (_checker_fails, ModelError, 3, "the ONNX checker rejects the model"),
    "opset_too_old": (lambda p: _save(tiny_model(6), p), UnsupportedOpsetError, 4,
                      "opset 6 is too old"),
    "opset_too_new": (lambda p: _save(tiny_model(99), p), UnsupportedOpsetError, 4,
                      "opset 99 is newer than this installation knows"),
    "unsupported_op": (_unsupported_op, UnsupportedOpError, 4, "unsupported operators Det"),
    "dynamic_shape": (_dynamic_shape, ModelError, 3,
                      "dynamic shapes that cannot be resolved.*reshape.*values of s"),
    "zero_bytes": (_empty, ModelError, 3, r"empty file \(0 bytes\)"),
    "missing": (lambda p: p, ModelError, 3, "no such model file"),
    "directory": (_directory, ModelError, 3, "is a directory"),
}


def _bad_model(tmp_path: Path, case: str) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    return CASES[case][0](folder / "model.onnx")


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_model_api_raises_typed_error_and_writes_nothing(tmp_path, case):
    from edgert.compiler import compile_model

    model = _bad_model(tmp_path, case)
    out = tmp_path / "out"
    out.mkdir()
    _, error, _, pattern = CASES[case]
    with pytest.raises(error, match=pattern) as info:
        compile_model(model, out / "model.edgert")
    assert type(info.value) is error            # the most specific type, not just a base
    assert "\n" not in str(info.value)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_model_cli_one_line_and_exit_code(tmp_path, case, monkeypatch, capsys):
    """``edgert compile`` in this process (``edgert.cli.main`` as the console script runs it):
    one ``error:`` line on stderr, the case's exit code, no file written."""
    from edgert import cli

    model = _bad_model(tmp_path, case)
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(sys, "argv", ["edgert", "compile", str(model), "-o", str(out / "m.edgert")])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == CASES[case][2]
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert list(out.iterdir()) == []


def test_cli_in_a_fresh_process_prints_no_traceback(tmp_path):
    model = _bad_model(tmp_path, "opset_too_new")
    res = run_cli("compile", str(model), "-o", str(tmp_path / "m.edgert"), timeout=120)
    assert res.returncode == 4
    assert res.stderr.strip().startswith("error: ") and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m.edgert").exists()


def test_exit_codes_are_distinct_per_error_class():
    import edgert.errors as errors

    classes = [getattr(errors, n) for n in errors.__all__]
    codes = {c.exit_code for c in classes if c is not errors.UnsupportedOpsetError}
    assert len(codes) == len(classes) - 1       # an opset shares "unsupported" (4) on purpose
    assert errors.UnsupportedOpsetError.exit_code == errors.UnsupportedOpError.exit_code
