"""Model checks before compiling: every unsupported op is reported at once."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from edgert.compiler import compile_model
from edgert.compiler.check import load_model
from edgert.errors import ModelError, UnsupportedOpError


def _model_with_unknown_ops(path):
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu_ok"),
        helper.make_node("FancyOp", ["a"], ["b"], name="fancy_1", domain="com.example"),
        helper.make_node("Tanh", ["b"], ["c"], name="tanh_ok"),
        helper.make_node("FancyOp", ["c"], ["d"], name="fancy_2", domain="com.example"),
        helper.make_node("Mystery", ["d"], ["y"], name="mystery", domain="com.example"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.example", 1)])
    onnx.save(model, path)
    return path


def test_all_unsupported_ops_listed_at_once(tmp_path):
    path = _model_with_unknown_ops(tmp_path / "m.onnx")
    with pytest.raises(UnsupportedOpError) as info:
        compile_model(path, tmp_path / "m.edgert")
    err = info.value
    assert err.unsupported == [("com.example.FancyOp", "fancy_1"), ("com.example.FancyOp", "fancy_2"),
                               ("com.example.Mystery", "mystery")]
    text = str(err)
    assert str(path) in text and "3 node(s)" in text
    for name in ("fancy_1", "fancy_2", "mystery"):
        assert name in text
    assert "relu_ok" not in text
    assert not (tmp_path / "m.edgert").exists()


def test_unnamed_unsupported_node_is_identified_by_output(tmp_path):
    node = helper.make_node("Unheard", ["x"], ["out_tensor"], domain="com.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("out_tensor", TensorProto.FLOAT, [2])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                      helper.make_opsetid("com.example", 1)]),
              tmp_path / "m.onnx")
    with pytest.raises(UnsupportedOpError, match="node producing 'out_tensor'"):
        compile_model(tmp_path / "m.onnx", tmp_path / "m.edgert")


def test_bad_files(tmp_path):
    with pytest.raises(ModelError, match="no such model file"):
        load_model(tmp_path / "nope.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01 not protobuf")
    with pytest.raises(ModelError, match="junk.onnx"):
        load_model(junk)


def test_checker_failure_names_the_file(tmp_path):
    # Add's inputs are never produced: the checker rejects the graph.
    node = helper.make_node("Add", ["x", "ghost"], ["y"], name="add")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    with pytest.raises(ModelError, match=r"m\.onnx: the ONNX checker rejects"):
        load_model(tmp_path / "m.onnx")
