"""Modelled energy: operation counts of small hand-checked graphs, the memory model, the
energy table (shipped and user), and the integer-only digits ViT against its fp32 graph."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgert.demo import demo_calib_file, demo_files
from edgert.energy import modelled_energy
from edgert.energy.graph_counts import count_graph
from edgert.compiler import compile_graph
from edgert.energy.table import DEFAULT_TABLE, load_table
from edgert.errors import InputError
from edgert.ops import DOMAIN, OPSET_VERSION


def _model(nodes, inputs, outputs, inits, edgert_ops: bool = False) -> onnx.ModelProto:
    opsets = [helper.make_opsetid("", 21)]
    if edgert_ops:
        opsets.append(helper.make_opsetid(DOMAIN, OPSET_VERSION))
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=opsets)


def _vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def _by_op(counts) -> dict[str, dict[str, int]]:
    return {n.op_type: {k: v for k, v in n.counts.as_dict().items() if v} for n in counts.nodes}


def matmul_model() -> onnx.ModelProto:
    """x [batch, 3, 4] @ w [4, 5] (an initializer)."""
    w = np.ones((4, 5), np.float32)
    return _model([helper.make_node("MatMul", ["x", "w"], ["y"])],
                  [_vi("x", TensorProto.FLOAT, ["batch", 3, 4])],
                  [_vi("y", TensorProto.FLOAT, ["batch", 3, 5])], {"w": w})


def test_matmul_counts_and_energy():
    counts = count_graph(matmul_model(), {"x": [2, 3, 4]})
    # 2 x 3 x 5 outputs, 4 products each: 120 multiplies and 120 adds; x 24, w 20, y 30 floats
    assert _by_op(counts) == {"MatMul": {"fp32_mul": 120, "fp32_add": 120,
                                         "bytes_read": 176, "bytes_written": 120}}
    assert counts.weights == {"w": 80}
    result = modelled_energy(matmul_model(), {"x": [2, 3, 4]})
    pj = 120 * (3.7 + 0.9)          # arithmetic
    pj += 80 / 8 * 10.0             # weights: 80 bytes from the 8 KB SRAM
    pj += (96 + 120) / 8 * 10.0     # activations x and y, 216 bytes, 8 KB SRAM
    assert result.method == "modelled"
    assert result.joules_per_inference == pytest.approx(pj / 2 * 1e-12, rel=1e-12)
    assert result.breakdown == pytest.approx({"fp32": 120 * 4.6e-12 / 2,
                                              "sram": (10 + 27) * 10.0e-12 / 2}, rel=1e-12)
    assert result.details["batch"] == 2 and result.details["input_shapes"] == {"x": [2, 3, 4]}


def test_conv_counts():
    """Conv 2 -> 3 channels, 3x3 kernel on 5x5, bias; then a grouped 2 -> 4 conv (group 2)."""
    inits = {"w": np.ones((3, 2, 3, 3), np.float32), "b": np.ones(3, np.float32),
             "wg": np.ones((4, 1, 3, 3), np.float32)}
    model = _model([helper.make_node("Conv", ["x", "w", "b"], ["y"]),
                    helper.make_node("Conv", ["x", "wg"], ["z"], group=2, pads=[1, 1, 1, 1])],
                   [_vi("x", TensorProto.FLOAT, [1, 2, 5, 5])],
                   [_vi("y", TensorProto.FLOAT, None), _vi("z", TensorProto.FLOAT, None)], inits)
    counts = count_graph(model)
    # y: 27 outputs x (2 x 3 x 3) = 486 products, + 27 bias adds
    # z: 4 x 5 x 5 = 100 outputs x (1 x 3 x 3) = 900 products
    got = [{k: v for k, v in n.counts.as_dict().items() if v} for n in counts.nodes]
    assert got == [
        {"fp32_mul": 486, "fp32_add": 513, "bytes_read": 4 * (50 + 54 + 3),
         "bytes_written": 4 * 27},
        {"fp32_mul": 900, "fp32_add": 900, "bytes_read": 4 * (50 + 36),
         "bytes_written": 4 * 100},
    ]


def test_standard_op_family_counts():
    """One node of each of several families, counted by edgert.energy.onnx_counts."""
    from edgert.energy.onnx_counts import EXP_NEG, NodeIO, count_standard

    f = np.float32

    def arith(op, ins, outs, **attrs):
        c = count_standard(op, NodeIO([s for s, _ in ins], [d for _, d in ins],
                                      [s for s, _ in outs], [d for _, d in outs], attrs))
        return {k: v for k, v in c.as_dict().items() if v and not k.startswith("bytes_")}

    # Gemm 2x8 @ (4x8)^T with alpha 0.5 and beta 2 on C: 64 MACs, 8 alpha + 8 beta mul, 8 adds
    assert arith("Gemm", [((2, 8), f), ((4, 8), f), ((4,), f)], [((2, 4), f)],
                 transB=1, alpha=0.5, beta=2.0) == {"fp32_mul": 80, "fp32_add": 72}
    # Softmax over rows of 5, 6 rows: per element EXP_NEG + 1 compare, 2 adds, 1 mul; 6 rows
    want = (EXP_NEG + type(EXP_NEG)(compares=1, fp32_add=2, fp32_mul=1)).times(30)
    got = arith("Softmax", [((2, 3, 5), f)], [((2, 3, 5), f)])
    assert got == {k: v + (6 if k == "fp32_mul" else 0) for k, v in want.as_dict().items() if v}
    # LayerNormalization, 4 rows of 8 with gamma and beta: 4 adds, 3 muls per element;
    # 4 muls, 1 add per row
    assert arith("LayerNormalization", [((4, 8), f), ((8,), f), ((8,), f)], [((4, 8), f)]) \
        == {"fp32_add": 4 * 32 + 4, "fp32_mul": 3 * 32 + 16}
    # MaxPool 2x2 stride 2 on 1x3x4x4: 12 outputs x 4 compares; GlobalAveragePool: 48 adds
    # and one multiply per output
    assert arith("MaxPool", [((1, 3, 4, 4), f)], [((1, 3, 2, 2), f)],
                 kernel_shape=[2, 2]) == {"compares": 48}
    assert arith("GlobalAveragePool", [((1, 3, 4, 4), f)], [((1, 3, 1, 1), f)]) \
        == {"fp32_add": 48, "fp32_mul": 3}
    assert arith("ReduceMean", [((2, 6), f)], [((2, 1), f)]) == {"fp32_add": 12, "fp32_mul": 2}
    assert arith("Where", [((6,), bool), ((6,), f), ((1,), f)], [((6,), f)]) == {"compares": 6}
    assert arith("Add", [((3, 4), np.int32), ((4,), np.int32)], [((3, 4), np.int32)]) \
        == {"int32_add": 12}
    assert arith("Transpose", [((3, 4), f)], [((4, 3), f)]) == {}
    assert count_standard("Reshape", NodeIO([(3, 4), (1,)], [f, np.int64], [(12,)], [f])) \
        .as_dict() == {k: 0 for k in want.as_dict()}


def test_integer_graph_counts():
    """QuantizeLinear -> MatMulInteger -> edgert.Requant -> DequantizeLinear."""
    inits = {"s": np.array(0.05, np.float32), "zp": np.array(0, np.int8),
             "wq": np.ones((4, 3), np.int8), "m": np.array([1 << 30], np.int64),
             "e": np.array([36], np.int64), "s2": np.array(0.1, np.float32)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
             helper.make_node("MatMulInteger", ["xq", "wq"], ["acc"]),
             helper.make_node("Requant", ["acc", "m", "e"], ["yq"], domain=DOMAIN,
                              to=TensorProto.INT8, lo=-128, hi=127, axis=-1),
             helper.make_node("DequantizeLinear", ["yq", "s2"], ["y"])]
    model = _model(nodes, [_vi("x", TensorProto.FLOAT, [1, 4])],
                   [_vi("y", TensorProto.FLOAT, [1, 3])], inits, edgert_ops=True)
    counts = count_graph(model)
    assert counts.shapes_from == "shape_inference"
    ops = {op: {k: v for k, v in c.items() if not k.startswith("bytes_")}
           for op, c in _by_op(counts).items()}
    assert ops == {
        # per element of x (4): x / s, round, + zero point, clip
        "QuantizeLinear": {"fp32_mul": 4, "fp32_add": 4, "int32_add": 4, "compares": 8},
        # 1 x 3 outputs x 4 products: int8 multiplies, int32 accumulation
        "MatMulInteger": {"int8_mul": 12, "int32_add": 12},
        # ops/requant/counts.py: per element 1 mul, 1 add, 1 shift, 2 compares; per channel
        # 1 add, 1 shift
        "edgert.Requant": {"int64_mul": 3, "int64_add": 4, "shifts": 4, "compares": 6},
        "DequantizeLinear": {"int32_add": 3, "fp32_mul": 3},
    }
    total = counts.total()
    assert (total.int8_mul, total.int32_add, total.fp32_mul) == (12, 19, 7)


def test_dynamic_dim_needs_a_shape():
    model = _model([helper.make_node("Relu", ["x"], ["y"])],
                   [_vi("x", TensorProto.FLOAT, ["batch", "seq"])],
                   [_vi("y", TensorProto.FLOAT, ["batch", "seq"])], {})
    with pytest.raises(InputError, match="dynamic dim 'seq'"):
        modelled_energy(model)
    assert modelled_energy(model, {"x": [1, 7]}).details["counts"]["compares"] == 7
    with pytest.raises(InputError, match="names 'z'"):
        modelled_energy(model, {"z": [1]})


def test_shipped_table_is_the_paper_where_it_has_entries():
    table = load_table()
    assert table.path == DEFAULT_TABLE and "Horowitz" in table.name
    paper = {"int8_add": 0.03, "int16_add": 0.05, "int32_add": 0.1, "fp16_add": 0.4,
             "fp32_add": 0.9, "int8_mul": 0.2, "int32_mul": 3.1, "fp16_mul": 1.1,
             "fp32_mul": 3.7}
    assert {k: table.ops[k] for k in paper} == paper
    assert table.memory["sram_8kb"] == 10 and table.memory["sram_1mb"] == 100
    assert 1300 <= table.memory["dram"] <= 2600


def _user_table(tmp_path, drop: str | None = None, scale: float = 1.0):
    """The shipped table, with ``drop`` left out and the fp32 entries times ``scale``."""
    lines = DEFAULT_TABLE.read_text().splitlines()
    out = []
    for line in lines:
        key = line.split("=")[0].strip()
        if key == drop:
            continue
        if key in ("fp32_add", "fp32_mul"):
            value = float(line.split("=")[1].split("#")[0])
            line = f"{key} = {value * scale}"
        out.append(line)
    path = tmp_path / "table.toml"
    path.write_text("\n".join(out) + "\n")
    return path


def test_user_table(tmp_path):
    base = modelled_energy(matmul_model(), {"x": [2, 3, 4]})
    doubled = modelled_energy(matmul_model(), {"x": [2, 3, 4]},
                              table=_user_table(tmp_path, scale=2.0))
    assert doubled.breakdown["fp32"] == pytest.approx(2 * base.breakdown["fp32"], rel=1e-12)
    assert doubled.breakdown["sram"] == pytest.approx(base.breakdown["sram"], rel=1e-12)
    assert str(tmp_path / "table.toml") in doubled.source
    with pytest.raises(InputError, match=r"table\.toml: missing key ops\.lookup"):
        load_table(_user_table(tmp_path, drop="lookup"))
    with pytest.raises(InputError, match=r"table\.toml: unknown key memory\.l3"):
        load_table(_bad_key(tmp_path))
    with pytest.raises(InputError, match="cannot read"):
        load_table(tmp_path / "absent.toml")


def _bad_key(tmp_path):
    path = _user_table(tmp_path)
    path.write_text(path.read_text().replace("[memory]\n", "[memory]\nl3 = 50.0\n"))
    return path


@pytest.fixture(scope="module")
def vit_graphs():
    """The digits ViT's fp32 and integer-only graphs, as edgert compile builds them (the graph
    stages only: the energy model does not need the TVM build)."""
    model = demo_files()[0]
    return compile_graph(model), compile_graph(model, int_only=True, calib=demo_calib_file())


def test_integer_vit_takes_less_energy_than_fp32(vit_graphs):
    fp32, integer = (modelled_energy(g) for g in vit_graphs)
    assert fp32.details["uncounted_ops"] == {} and integer.details["uncounted_ops"] == {}
    assert "fp32" in fp32.breakdown and "int8" in integer.breakdown
    assert integer.details["counts"].get("fp32_mul", 0) < fp32.details["counts"]["fp32_mul"] / 100
    assert integer.details["weight_bytes"] < fp32.details["weight_bytes"] / 2
    assert integer.joules_per_inference < 0.6 * fp32.joules_per_inference


def test_package_imports_only_numpy_and_the_runtime():
    """A board bundle with only numpy imports edgert.energy (onnx only when a graph is counted)."""
    import subprocess
    import sys

    code = ("import sys, edgert.energy; "
            "print(sorted(m for m in ('onnx', 'tvm', 'numba', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
