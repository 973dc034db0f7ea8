"""``edgert compile --int-only --binary-attention``: the integer quadratic and linear forms on
the digits ViT (``compiler/binary_attention_int.py``, ``docs/methods/binary-attention.md``).

One compile of the quadratic form (calibration: the first 32 of the 360 held-out digits, all
360 scored, as for the fp32 rows of the doc's table; 16-bit codes) serves the tests: no float
op in the graph, the attention's scores from packed codes by xor and popcount (Shiftmax reads
a Cast of ``IntBinaryAttention``), numba == TVM bit for bit on the 360 held-out digits, and
their top-1 pinned exactly (the fit is deterministic numpy; the graph integer). Plus: the
scores of the graph equal numpy's ±1 dot products of the signs of the graph's own int8
queries and keys under the int8 projection (what the int8 multiply-adds of ±1 codes gave
before). The linear form: its graph (no TVM build) has no float op, the numba backend equals
the reference executor bit for bit, and its top-1 is pinned; with
``EDGERT_BINARY_ATTENTION=all`` also its TVM build (its kernels are checked against the spec
in ``tests/test_op_binary_attention_int.py``). An rpi5 build under qemu against numba and the
reference executor: the quadratic form, and the linear one with that variable. On
hand-built graphs (no TVM build), both forms: the SDPA and shared-hash (symbolic heads)
layouts get integer codes too (float ops 0, the reference executor runs them), and a bias the
quantizer adds to the scores keeps its integer softmax attention.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

import edgert
from edgert.artifact import MODEL_MEMBER, read_artifact
from edgert.backends.reference import run_reference
from edgert.compiler import compile_model
from edgert.compiler.binary_attention_int import multipliers
from edgert.demo import demo_files
from edgert.model_info import describe_model

from ophelpers import assert_bit_exact
from test_binary_attention_models import _feeds, _graph

CALIB = 32
VIT_INT_CORRECT = 94
"""Top-1 of the 360 held-out digits, integer graph, 16-bit linear-hash codes, quadratic form
(fp32: 353; the same with the ±1 codes' int8 multiply-adds before the popcount op)."""
VIT_INT_LINEAR_CORRECT = 60
"""The same, linear form (measured 2026-12-07; fp32 graph's linear form: 71)."""


@pytest.fixture(scope="module")
def vit_int(tmp_path_factory):
    out = tmp_path_factory.mktemp("ba_int") / "vit.edgert"
    images = np.load(demo_files()[1])["images"]
    artifact = compile_model(demo_files()[0], out, int_only=True,
                             binary_attention=True, hash_bits=16,
                             calib={"image": images[:CALIB]})
    art = read_artifact(artifact)
    return artifact, art.manifest, onnx.load_from_string(art.members[MODEL_MEMBER])


def test_integer_graph_has_no_float_ops(vit_int):
    _artifact, manifest, model = vit_int
    info = describe_model(model)
    assert info["float_ops"] == 0, info["float_nodes"]
    section = manifest["binary_attention"]
    assert section["integer"] and section["method"] == "linear" and not section["kept"]
    assert len(section["replaced"]) == 2
    for site in section["replaced"]:
        assert 1 <= min(site["multipliers"]) and max(site["multipliers"]) <= 127 // 16
        assert min(site["pair_auc"]) > 0.85          # the supervised linear hash (PCA: ~0.5)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Shiftmax") == 2 and "HashCodes" not in ops
    assert ops.count("IntBinaryAttention") == 2
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type == "Shiftmax":
            cast = producer[node.input[0]]
            assert cast.op_type == "Cast"
            scores = producer[cast.input[0]]
            assert scores.op_type == "IntBinaryAttention" and scores.output[0].endswith("_scores32")


def test_numba_equals_tvm_and_accuracy(vit_int):
    artifact, _manifest, _model = vit_int
    data = np.load(demo_files()[1])
    feed = {"image": data["images"]}
    tvm_out = edgert.Session(artifact, backend="tvm").run(None, feed)[0]
    numba_out = edgert.Session(artifact, backend="numba").run(None, feed)[0]
    assert_bit_exact("numba vs tvm", numba_out, tvm_out)
    correct = int((tvm_out.argmax(1) == data["labels"]).sum())
    print(f"\nViT --int-only --binary-attention: {correct}/360 (fp32 353)")
    assert correct == VIT_INT_CORRECT


def test_scores_are_the_pm1_products_of_the_projection_signs(vit_int):
    """The graph's popcount scores equal numpy's ±1 dot products of the signs of its own int8
    queries and keys under its int8 projection, times the head's multiplier."""
    _artifact, manifest, model = vit_int
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    prefix = "binary_attention_0"
    q_name, keys = nodes[f"{prefix}_scores32"].input[:2]
    wanted = [q_name, keys, f"{prefix}_scores32"]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED,
                                                                 None) for n in wanted)
    images = np.load(demo_files()[1])["images"][:4]
    q, k, scores = run_reference(probe, {"image": images})
    wt = np.swapaxes(inits[f"{prefix}_proj"].astype(np.int64), 1, 2)      # [H, D, b]
    m = manifest["binary_attention"]["replaced"][0]["multipliers"]
    np.testing.assert_array_equal(inits[f"{prefix}_multipliers"], m)
    sign = lambda z: np.where(z < 0, -1, 1)                             # noqa: E731
    hq, hk = sign(q.astype(np.int64) @ wt), sign(k.astype(np.int64) @ wt)
    want = np.asarray(m).reshape(-1, 1, 1) * (hq @ np.swapaxes(hk, -1, -2))
    np.testing.assert_array_equal(scores, want)


def test_multipliers_approximate_the_temperatures():
    m, x = multipliers(np.array([0.098, 0.079, 0.056]), 16)
    assert m.max() <= 7 and m.min() >= 1
    np.testing.assert_allclose(m / x, [0.098, 0.079, 0.056], rtol=0.15)


def test_linear_form_graph_accuracy_and_numba(tmp_path):
    """``--attention-form linear`` with --int-only: IntBinaryAttention replaces Shiftmax and
    the product with V, the quantizer's Requant reads it unchanged; numba == reference
    executor bit for bit on the 360 digits; top-1 pinned."""
    from edgert.backends.numba_backend import Plan
    from edgert.compiler import compile_graph

    data = np.load(demo_files()[1])
    np.savez(tmp_path / "calib.npz", image=data["images"][:CALIB])
    model = compile_graph(demo_files()[0], int_only=True, binary_attention=True, hash_bits=16,
                          attention_form="linear", calib=tmp_path / "calib.npz")
    info = describe_model(model)
    assert info["float_ops"] == 0, info["float_nodes"]
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("IntBinaryAttention") == 2 and "Shiftmax" not in ops
    consumer = {i: n for n in model.graph.node for i in n.input}
    for node in model.graph.node:
        if node.op_type == "IntBinaryAttention":
            assert dict((a.name, a) for a in node.attribute)["frac"].i == 15
            assert consumer[node.output[0]].op_type == "Requant"
    feed = {"image": data["images"]}
    [want] = run_reference(model, feed)
    [got] = Plan(model).run([data["images"]])
    assert_bit_exact("numba vs reference", got, want)
    correct = int((want.argmax(1) == data["labels"]).sum())
    print(f"\nViT --int-only --binary-attention --attention-form linear: {correct}/360")
    assert correct == VIT_INT_LINEAR_CORRECT
    if os.environ.get("EDGERT_BINARY_ATTENTION") == "all":      # the TVM build: ~40 s more
        artifact = compile_model(demo_files()[0], tmp_path / "lin.edgert", int_only=True,
                                 binary_attention=True, hash_bits=16, attention_form="linear",
                                 calib=tmp_path / "calib.npz")
        assert_bit_exact("tvm vs reference",
                         edgert.Session(artifact, backend="tvm").run(None, feed)[0], want)


def _hand_built(tmp_path, style: str, bias: bool, n: int = 16):
    """The attention test graph of ``test_binary_attention_models`` saved with its calibration
    feeds (without its bias: Softmax straight on the scaled scores)."""
    rng = np.random.default_rng(0)
    model = _graph(style, rng)
    feeds = _feeds(rng, n, style)
    if not bias:
        add = next(n for n in model.graph.node if n.op_type == "Add")
        next(n for n in model.graph.node if n.op_type == "Softmax").input[0] = add.input[0]
        model.graph.node.remove(add)
        model.graph.input.remove(next(i for i in model.graph.input if i.name == "bias"))
        del feeds["bias"]
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", **feeds)
    return tmp_path / "m.onnx", tmp_path / "calib.npz", feeds


@pytest.mark.parametrize("style,bias,form", [("sdpa", False, "quadratic"),
                                             ("shared", False, "quadratic"),
                                             ("minilm", True, "quadratic"),
                                             ("sdpa", False, "linear"),
                                             ("shared", False, "linear")])
def test_hand_built_attention(tmp_path, style, bias, form):
    from edgert.compiler import compile_graph

    path, calib, feeds = _hand_built(tmp_path, style, bias)
    out = compile_graph(path, int_only=True, binary_attention=True, hash_bits=8,
                        attention_form=form, calib=calib)
    assert describe_model(out)["float_ops"] == 0
    found = [n for n in out.graph.node if n.op_type == "IntBinaryAttention"]
    assert len(found) == (0 if bias else 1)
    assert all(dict((a.name, a) for a in n.attribute)["form"].s == form.encode() for n in found)
    [y] = run_reference(out, feeds)
    assert y.shape == (16, 2, 6, 4) and np.isfinite(y).all()


@pytest.mark.parametrize("form", ["quadratic", "linear"])
def test_rpi5_under_qemu_matches_host_and_reference(qemu_env, tmp_path, form):
    """An integer graph with IntBinaryAttention compiled for rpi5 and run under qemu
    (aarch64, ``cnt`` popcounts) gives the bits of the numba backend and of the reference
    executor (the op's numpy spec); the x86 build's bits are checked against numba on the
    ViT above. The quadratic form always; the linear one (another 25 s) with
    EDGERT_BINARY_ATTENTION=all (its x86 kernels are bit-exact against the spec in
    tests/test_op_binary_attention_int.py)."""
    if form == "linear" and os.environ.get("EDGERT_BINARY_ATTENTION") != "all":
        pytest.skip("the linear form under qemu runs with EDGERT_BINARY_ATTENTION=all")
    from edgert.targets.qemu import run_under_qemu

    path, calib, feeds = _hand_built(tmp_path, "sdpa", False)
    rpi5 = compile_model(path, tmp_path / "iba_rpi5.edgert", target="rpi5", int_only=True,
                         binary_attention=True, hash_bits=16, attention_form=form,
                         calib=str(calib))
    model = onnx.load_from_string(read_artifact(rpi5).members[MODEL_MEMBER])
    assert "IntBinaryAttention" in [n.op_type for n in model.graph.node]
    feed = {k: v[:5] for k, v in feeds.items()}
    [want] = run_reference(model, feed)
    for name, got in (("numba", edgert.Session(rpi5, backend="numba").run(None, feed)[0]),
                      ("rpi5 (qemu)", run_under_qemu(rpi5, feed)[0])):
        assert_bit_exact(name, got, want)
