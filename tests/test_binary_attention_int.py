"""``edgert compile --int-only --binary-attention``: the integer quadratic form on the digits
ViT (``compiler/binary_attention_int.py``, ``docs/methods/binary-attention.md``).

One compile (calibration: the first 32 of the 360 held-out digits, all 360 scored, as for the
fp32 rows of the doc's table; 16-bit codes) serves the tests: no float op
in the graph, the attention's scores from the codes (Shiftmax reads a Cast of the codes'
MatMulInteger), numba == TVM bit for bit on the 360 held-out digits, and their top-1 pinned
exactly (the fit is deterministic numpy; the graph integer). Plus: the codes and scores of the
graph equal numpy's integer arithmetic on the graph's own int8 queries and keys, and the linear
form is refused with --int-only. On hand-built graphs (no TVM build): the SDPA and shared-hash
(symbolic heads) layouts get integer codes too (float ops 0, the reference executor runs them),
and a bias the quantizer adds to the scores keeps its integer softmax attention.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import edgert
from edgert.artifact import MODEL_MEMBER, read_artifact
from edgert.backends.reference import run_reference
from edgert.compiler import compile_model
from edgert.compiler.binary_attention_int import multipliers
from edgert.demo import demo_calib_file, demo_files
from edgert.errors import InputError
from edgert.model_info import describe_model

from ophelpers import assert_bit_exact
from test_binary_attention_models import _feeds, _graph

CALIB = 32
VIT_INT_CORRECT = 94
"""Top-1 of the 360 held-out digits, integer graph, 16-bit linear-hash codes (fp32: 353)."""


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
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type == "Shiftmax":
            cast = producer[node.input[0]]
            assert cast.op_type == "Cast" and producer[cast.input[0]].op_type == "MatMulInteger"
            assert producer[cast.input[0]].output[0].endswith("_scores32")


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


def test_codes_are_the_sign_of_the_integer_projection(vit_int):
    """The graph's codes and scores equal numpy on its own int8 queries/keys and int8 W."""
    _artifact, manifest, model = vit_int
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    prefix = "binary_attention_0"
    q_name = nodes[f"{prefix}_zq"].input[0]
    keys = nodes[f"{prefix}_keys"].input[0]
    wanted = [q_name, keys, f"{prefix}_query_codes", f"{prefix}_scores32"]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED,
                                                                 None) for n in wanted)
    images = np.load(demo_files()[1])["images"][:4]
    q, kt, cq, scores = run_reference(probe, {"image": images})
    wt = inits[f"{prefix}_proj_t"].astype(np.int64)                     # [H, D, b]
    m = manifest["binary_attention"]["replaced"][0]["multipliers"]
    sign = lambda z: np.where(z < 0, -1, 1)                             # noqa: E731
    want_cq = sign(q.astype(np.int64) @ wt)
    want_ck = sign(np.swapaxes(kt, -1, -2).astype(np.int64) @ wt)
    np.testing.assert_array_equal(cq, want_cq)
    bits = wt.shape[-1]
    popcount = ((want_cq[..., :, None, :] != want_ck[..., None, :, :]).sum(-1))
    want_scores = np.asarray(m).reshape(-1, 1, 1) * (bits - 2 * popcount)
    np.testing.assert_array_equal(scores, want_scores)


def test_multipliers_approximate_the_temperatures():
    m, x = multipliers(np.array([0.098, 0.079, 0.056]), 16)
    assert m.max() <= 7 and m.min() >= 1
    np.testing.assert_allclose(m / x, [0.098, 0.079, 0.056], rtol=0.15)


def test_linear_form_is_refused_with_int_only(tmp_path):
    with pytest.raises(InputError, match="quadratic form only"):
        compile_model(demo_files()[0], tmp_path / "x.edgert", int_only=True,
                      binary_attention=True, attention_form="linear",
                      calib=demo_calib_file())


@pytest.mark.parametrize("style,bias", [("sdpa", False), ("shared", False), ("minilm", True)])
def test_hand_built_attention(tmp_path, style, bias):
    from edgert.compiler import compile_graph

    rng = np.random.default_rng(0)
    model = _graph(style, rng)
    feeds = _feeds(rng, 16, style)
    if not bias:                                  # Softmax straight on the scaled scores
        add = next(n for n in model.graph.node if n.op_type == "Add")
        next(n for n in model.graph.node if n.op_type == "Softmax").input[0] = add.input[0]
        model.graph.node.remove(add)
        model.graph.input.remove(next(i for i in model.graph.input if i.name == "bias"))
        del feeds["bias"]
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", **feeds)
    out = compile_graph(tmp_path / "m.onnx", int_only=True, binary_attention=True, hash_bits=8,
                        calib=tmp_path / "calib.npz")
    assert describe_model(out)["float_ops"] == 0
    replaced = any(n.name.endswith("_scores32") for n in out.graph.node)
    assert replaced == (not bias)
    [y] = run_reference(out, feeds)
    assert y.shape == (16, 2, 6, 4) and np.isfinite(y).all()
