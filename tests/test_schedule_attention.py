"""fp32 attention: the fused kernel (compiler/schedule_attention.py: ``softmax(Q K^T * scale
+ mask) V`` per head in one kernel, Q/K/V read through the head transposes) against float64
numpy in several layouts, shapes, masks and batches, the compiled graphs against onnxruntime;
and the float32 matmul kernel reading B transposed (``Q K^T`` without a transpose kernel,
compiler/matmul_template.py ``b_transposed``) against numpy."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

MATMUL_RTOL = 1e-5
"""Float32 products summed in K order as fused multiply-adds against numpy's float32 matmul
(its own blocked order): relative to the largest output, measured 7e-7 for K = 64."""


def _target(name: str | None = None, cores: int = 2):
    from edgert.targets import get_target, resolve_host

    target = resolve_host() if name is None else get_target(name)
    return tvm.target.Target(target.tvm_target_dict(num_cores=cores))


def _bt_kernel(k, n, batched, cores, isa_name="FMA_X86"):
    from edgert.compiler import schedule_intmatmul as si

    isa = getattr(si, isa_name)
    config = si.FLOAT_CONFIG_AVX512 if isa is si.FMA_AVX512 else si.FLOAT_CONFIG
    return si.int_matmul_kernel("float32", "float32", k, n, b_packed=False, b_batched=batched,
                                config=config, cores=cores, isa=isa, name="mm",
                                b_transposed=True)


@pytest.mark.parametrize("m,kk,nn,static,batched,cores", [
    (40, 24, 40, True, True, 2),        # a small encoder's heads
    (70, 64, 77, False, True, 2),       # symbolic n, ragged last column block
    (33, 19, 5, False, False, 2),       # one B for every batch, N under one block
    (7, 8, 48, True, True, 2)])
def test_transposed_b_kernel_matches_numpy(m, kk, nn, static, batched, cores):
    rng = np.random.default_rng(m)
    a = rng.standard_normal((3, m, kk)).astype(np.float32)
    bt = rng.standard_normal((3 if batched else 1, nn, kk)).astype(np.float32)
    func = _bt_kernel(kk if static else None, nn if static else None, batched, cores)
    lib = tvm.compile(tvm.IRModule({"mm": func}), target=_target(cores=cores))
    out = tvm.runtime.tensor(np.zeros((3, m, nn), np.float32))
    lib["mm"](tvm.runtime.tensor(a), tvm.runtime.tensor(bt), *([] if static else [kk, nn]), out)
    want = a @ bt.transpose(0, 2, 1)
    assert np.abs(out.numpy() - want).max() <= MATMUL_RTOL * np.abs(want).max()


def test_transposed_b_kernel_avx512():
    """The AVX-512 float kernel (16 lanes) with a transposed B: run where the CPU has
    AVX-512, else compiled and checked for zmm FMAs in the assembly."""
    from edgert.targets import host_cpu_features

    target = _target("x86-avx512")
    lib = tvm.compile(tvm.IRModule({"mm": _bt_kernel(None, None, True, 2, "FMA_AVX512")}),
                      target=target)
    asm = lib.mod.inspect_source("asm")
    assert "zmm" in asm and "vfmadd" in asm
    if "avx512f" not in host_cpu_features():
        return
    rng = np.random.default_rng(0)
    a, bt = rng.standard_normal((2, 50, 64), np.float32), rng.standard_normal((2, 45, 64),
                                                                              np.float32)
    out = tvm.runtime.tensor(np.zeros((2, 50, 45), np.float32))
    lib["mm"](tvm.runtime.tensor(a), tvm.runtime.tensor(bt), 64, 45, out)
    want = a @ bt.transpose(0, 2, 1)
    assert np.abs(out.numpy() - want).max() <= MATMUL_RTOL * np.abs(want).max()


def _attention_onnx(path, d: int = 32, n: int | str = "n"):
    """q, k, v [batch, 2, n, d] -> softmax(q k^T / sqrt(d)) v, n symbolic by default."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    f = TensorProto.FLOAT
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["qk"]),
             helper.make_node("Mul", ["qk", "scale"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["out"])]
    inputs = [helper.make_tensor_value_info(x, f, ["batch", 2, n, d]) for x in "qkv"]
    graph = helper.make_graph(nodes, "attention", inputs,
                              [helper.make_tensor_value_info("out", f, ["batch", 2, n, d])],
                              [numpy_helper.from_array(np.float32(d ** -0.5), "scale")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _scores_onnx(path, d: int = 32):
    """q, k [batch, 2, n, d] -> q k^T / sqrt(d): no softmax, so nothing to fuse."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    f = TensorProto.FLOAT
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["qk"]),
             helper.make_node("Mul", ["qk", "scale"], ["out"])]
    inputs = [helper.make_tensor_value_info(x, f, ["batch", 2, "n", d]) for x in "qk"]
    graph = helper.make_graph(nodes, "scores", inputs,
                              [helper.make_tensor_value_info("out", f, ["batch", 2, "n", "n"])],
                              [numpy_helper.from_array(np.float32(d ** -0.5), "scale")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _compiled(tmp_path, path):
    import edgert
    from edgert.compiler import compile_model

    return edgert.Session(compile_model(path, tmp_path / "m.edgert", threads=2), threads=2)


def test_scores_graph_folds_the_transpose_and_matches_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    path = _scores_onnx(tmp_path / "scores.onnx")
    sess, ref = _compiled(tmp_path, path), ort.InferenceSession(str(path))
    rng = np.random.default_rng(0)
    for n in (5, 67):
        feed = {x: rng.standard_normal((2, 2, n, 32)).astype(np.float32) for x in "qk"}
        names = {t.name for t in sess.kernel_times(feed, repeats=1)}
        assert any("_bt_" in name for name in names), names      # K read as B^T ...
        assert not any(name.startswith(("transpose", "fused_transpose")) for name in names)
        got, want = sess.run(None, feed)[0], ref.run(None, feed)[0]
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


# ---------------------------------------------------------------- the fused kernel

FUSED_TOL = 1e-5
"""|fused - float64 attention| <= FUSED_TOL * max(1, max |float64|): float32 scores summed in
D order as fused multiply-adds, the polynomial exp (7.9e-8), the row sum in 8 partial sums;
measured up to 7e-7 on these cases."""


def _attention64(q, k, v, scale, mask=None):
    """float64 softmax(q k^T * scale + mask) v over [B, H, S, D] arrays."""
    s = np.einsum("bhmd,bhnd->bhmn", q.astype(np.float64), k.astype(np.float64)) * scale
    if mask is not None:
        s = s + mask
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v.astype(np.float64)


def _in_layout(x, layout):
    """A [B, H, S, D] array stored in ``layout``."""
    return np.ascontiguousarray({"bhsd": x, "bshd": x.transpose(0, 2, 1, 3),
                                 "bhds": x.transpose(0, 1, 3, 2)}[layout])


def _run_fused(spec, q, k, v, mask, target):
    from edgert.compiler.schedule_attention import attention_kernel

    func = attention_kernel(spec).with_attr("global_symbol", "attn")
    lib = tvm.compile(tvm.IRModule({"attn": func}), target=target)
    b, h, m, d = q.shape
    out = tvm.runtime.tensor(np.zeros((b, m, h, d) if spec.o == "bshd" else (b, h, m, d),
                                      np.float32))
    args = [_in_layout(q, spec.q), _in_layout(k, spec.k), _in_layout(v, spec.v)]
    args += [] if mask is None else [mask]
    lib["attn"](*(tvm.runtime.tensor(a) for a in args), out)
    got = out.numpy()
    return (got.transpose(0, 2, 1, 3) if spec.o == "bshd" else got), lib


@pytest.mark.parametrize("b,h,m,n,d,layouts,mask,par", [
    (1, 1, 37, 37, 64, ("bhsd", "bhsd", "bhsd", "bhsd"), None, True),
    (2, 3, 20, 45, 32, ("bshd", "bshd", "bshd", "bshd"), (True, False, False), True),
    (8, 2, 16, 16, 32, ("bshd", "bshd", "bshd", "bshd"), (True, False, False), True),
    (1, 2, 17, 17, 8, ("bhsd", "bhds", "bhsd", "bshd"), (False, False, True), False),
    (2, 4, 5, 130, 24, ("bhsd", "bshd", "bshd", "bhsd"), (True, True, True), True)])
def test_fused_attention_kernel_matches_float64(b, h, m, n, d, layouts, mask, par):
    from edgert.compiler.schedule_attention import AttentionSpec

    rng = np.random.default_rng(m * n + d)
    q = rng.standard_normal((b, h, m, d)).astype(np.float32)
    k, v = (rng.standard_normal((b, h, n, d)).astype(np.float32) for _ in "kv")
    msk = None
    if mask is not None:
        msk = (rng.standard_normal((b if mask[0] else 1, h if mask[1] else 1,
                                    m if mask[2] else 1, n)) * 3).astype(np.float32)
        msk[..., : n // 3] = -10000.0            # padding keys, BERT style
    scale = d ** -0.5
    spec = AttentionSpec(d, *layouts, mask, scale, 8, par)
    got, _ = _run_fused(spec, q, k, v, msk, _target())
    want = _attention64(q, k, v, np.float32(scale), msk)
    assert np.abs(got - want).max() <= FUSED_TOL * max(1.0, np.abs(want).max())


def test_fused_attention_kernel_avx512():
    """16 lanes: run where the CPU has AVX-512, else compiled and checked for zmm FMAs."""
    from edgert.compiler.schedule_attention import AttentionSpec
    from edgert.targets import host_cpu_features

    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((2, 3, 40, 32)).astype(np.float32) for _ in "qkv")
    mask = rng.standard_normal((2, 1, 1, 40)).astype(np.float32)
    spec = AttentionSpec(32, "bshd", "bshd", "bshd", "bshd", (True, False, False), 0.17, 16)
    target = _target("x86-avx512")
    if "avx512f" in host_cpu_features():
        got, lib = _run_fused(spec, q, k, v, mask, target)
        want = _attention64(q, k, v, np.float32(0.17), mask)
        assert np.abs(got - want).max() <= FUSED_TOL * max(1.0, np.abs(want).max())
    else:
        from edgert.compiler.schedule_attention import attention_kernel

        lib = tvm.compile(tvm.IRModule({"attn": attention_kernel(spec).with_attr(
            "global_symbol", "attn")}), target=target)
    asm = lib.mod.inspect_source("asm")
    assert "zmm" in asm and "vfmadd" in asm


def _bert_attention_onnx(path, heads: int = 4, d: int = 16):
    """BERT's self-attention core: q, k, v [batch, seq, heads * d] split into heads
    (Reshape + Transpose), scores / sqrt(d) + mask [batch, 1, 1, seq], Softmax, times V, heads
    merged back (Transpose + Reshape)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    f, w = TensorProto.FLOAT, heads * d
    nodes = [helper.make_node("Reshape", [x, "split"], [x + "4"]) for x in "qkv"]
    nodes += [helper.make_node("Transpose", ["q4"], ["qh"], perm=[0, 2, 1, 3]),
              helper.make_node("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1]),
              helper.make_node("Transpose", ["v4"], ["vh"], perm=[0, 2, 1, 3]),
              helper.make_node("MatMul", ["qh", "kt"], ["qk"]),
              helper.make_node("Div", ["qk", "sqrt_d"], ["scaled"]),
              helper.make_node("Add", ["scaled", "mask"], ["logits"]),
              helper.make_node("Softmax", ["logits"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "vh"], ["o"]),
              helper.make_node("Transpose", ["o"], ["o4"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["o4", "merge"], ["out"])]
    inputs = [helper.make_tensor_value_info(x, f, ["batch", "seq", w]) for x in "qkv"]
    inputs.append(helper.make_tensor_value_info("mask", f, ["batch", 1, 1, "seq"]))
    inits = [numpy_helper.from_array(np.array([0, 0, heads, d], np.int64), "split"),
             numpy_helper.from_array(np.array([0, 0, w], np.int64), "merge"),
             numpy_helper.from_array(np.float32(d ** 0.5), "sqrt_d")]
    graph = helper.make_graph(nodes, "bert_attention", inputs,
                              [helper.make_tensor_value_info("out", f, ["batch", "seq", w])],
                              inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_bert_attention_fuses_without_transposes_and_matches_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    path = _bert_attention_onnx(tmp_path / "bert.onnx")
    sess, ref = _compiled(tmp_path, path), ort.InferenceSession(str(path))
    rng = np.random.default_rng(0)
    for batch, n in ((1, 16), (8, 33), (2, 130)):
        feed = {x: rng.standard_normal((batch, n, 64)).astype(np.float32) for x in "qkv"}
        mask = np.zeros((batch, 1, 1, n), np.float32)
        mask[0, ..., n - n // 4:] = -10000.0                     # padding of sequence 0
        feed["mask"] = mask
        names = {t.name for t in sess.kernel_times(feed, repeats=1)}
        assert any(name.startswith("attention_d16_bshd_bshd_bshd_bshd") for name in names), names
        assert not any("transpose" in name or "softmax" in name or "matmul" in name
                       for name in names), names
        got, want = sess.run(None, feed)[0], ref.run(None, feed)[0]
        assert np.abs(got - want).max() <= FUSED_TOL * max(1.0, np.abs(want).max())


def test_attention_graph_is_fused_and_matches_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    path = _attention_onnx(tmp_path / "attention.onnx")
    sess, ref = _compiled(tmp_path, path), ort.InferenceSession(str(path))
    rng = np.random.default_rng(0)
    for n in (5, 67):
        feed = {x: rng.standard_normal((2, 2, n, 32)).astype(np.float32) for x in "qkv"}
        names = {t.name for t in sess.kernel_times(feed, repeats=1)}
        assert any(name.startswith("attention_d32_bhsd_bhsd_bhsd_bhsd") for name in names)
        assert not any(name.startswith(("transpose", "fused_transpose", "softmax"))
                       for name in names), names
        got, want = sess.run(None, feed)[0], ref.run(None, feed)[0]
        assert np.abs(got - want).max() <= FUSED_TOL * max(1.0, np.abs(want).max())


def test_long_static_key_sequences_stay_unfused(tmp_path):
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    from edgert.compiler.schedule_attention import MAX_FUSED_KEYS, fused_attentions

    def fused(n):
        mod = from_onnx(onnx.load(_attention_onnx(tmp_path / f"a{n}.onnx", n=n)))
        return "attention_d32" in fused_attentions(mod, _target(), 8).script()

    assert fused(MAX_FUSED_KEYS) and not fused(MAX_FUSED_KEYS + 1)
