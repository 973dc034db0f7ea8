"""The edgert op schemas register with ONNX, and the checker accepts graphs that use them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgert.ops import DOMAIN, register_schemas, registry


def _graph(nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid(DOMAIN, 1)])


def test_every_op_has_a_schema():
    assert registry.names()
    for op in registry.all():
        s = op.schema()
        assert (s.name, s.domain) == (op.name, DOMAIN)


def test_checker_accepts_registered_ops_and_rejects_wrong_types():
    register_schemas()
    register_schemas()  # idempotent
    m, e = np.array([1 << 30], np.int64), np.array([31], np.int64)
    inits = [numpy_helper.from_array(m, "m"), numpy_helper.from_array(e, "e")]
    nodes = [
        helper.make_node("Requant", ["acc", "m", "e"], ["q"], domain=DOMAIN, to=TensorProto.INT8,
                         lo=-128, hi=127, axis=-1),
        helper.make_node("Shiftmax", ["q"], ["p"], domain=DOMAIN, x0=-16, n=15, k=16),
    ]
    good = _graph(nodes, [helper.make_tensor_value_info("acc", TensorProto.INT32, [2, 8])],
                  [helper.make_tensor_value_info("p", TensorProto.INT16, [2, 8])], inits)
    onnx.checker.check_model(good, full_check=True)

    bad = _graph([helper.make_node("Shiftmax", ["x"], ["p"], domain=DOMAIN, x0=-16, n=15, k=16)],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                 [helper.make_tensor_value_info("p", TensorProto.INT16, [2, 8])])
    with pytest.raises(onnx.shape_inference.InferenceError, match=r"unsupported type: tensor\(float\)"):
        onnx.checker.check_model(bad, full_check=True)


def test_inference_gives_every_output_type():
    """Shape inference fills in dtype (and shape where it is elementwise) of every edgert op."""
    register_schemas()
    m, e = np.array([1 << 30], np.int64), np.array([31], np.int64)
    inits = [numpy_helper.from_array(m, "m"), numpy_helper.from_array(e, "e"),
             numpy_helper.from_array(np.zeros(8, np.int32), "beta"),
             numpy_helper.from_array(np.ones((8, 4), np.int8), "w")]
    nodes = [
        helper.make_node("ILayerNorm", ["x", "beta"], ["ln"], domain=DOMAIN),
        helper.make_node("ILayerNorm", ["x"], ["ln_nobias"], domain=DOMAIN),
        helper.make_node("Requant", ["ln", "m", "e"], ["q16"], domain=DOMAIN, to=TensorProto.INT16,
                         lo=-32768, hi=32767, axis=-1),
        helper.make_node("ShiftGELU", ["q16"], ["g"], domain=DOMAIN, x0=-100, n=10),
        helper.make_node("Shiftmax", ["q16"], ["p8"], domain=DOMAIN, x0=-16, n=15, k=8),
        helper.make_node("IntMatMul", ["q16", "w"], ["y"], domain=DOMAIN),
    ]
    model = _graph(nodes, [helper.make_tensor_value_info("x", TensorProto.INT16, [2, 8])],
                   [helper.make_tensor_value_info("y", TensorProto.INT32, [2, 4])], inits)
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    types = {v.name: v.type.tensor_type for v in inferred.graph.value_info}
    want = {"ln": TensorProto.INT32, "ln_nobias": TensorProto.INT32, "q16": TensorProto.INT16,
            "g": TensorProto.INT32, "p8": TensorProto.INT8}
    for name, elem in want.items():
        assert types[name].elem_type == elem, name
        assert [d.dim_value for d in types[name].shape.dim] == [2, 8], name
    out = onnx.shape_inference.infer_shapes(model).graph.output[0].type.tensor_type
    assert [d.dim_value for d in out.shape.dim] == [2, 4]
