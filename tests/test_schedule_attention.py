"""fp32 attention: the float32 matmul kernel reading B transposed (``Q K^T`` without a
transpose kernel, compiler/matmul_template.py ``b_transposed``) against numpy, and the
compiled ``softmax(q k^T / 8) v`` graph against onnxruntime."""

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


def _attention_onnx(path, d: int = 32):
    """q, k, v [batch, 2, n, d] -> softmax(q k^T / sqrt(d)) v, n symbolic."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    f = TensorProto.FLOAT
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["qk"]),
             helper.make_node("Mul", ["qk", "scale"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["out"])]
    inputs = [helper.make_tensor_value_info(x, f, ["batch", 2, "n", d]) for x in "qkv"]
    graph = helper.make_graph(nodes, "attention", inputs,
                              [helper.make_tensor_value_info("out", f, ["batch", 2, "n", d])],
                              [numpy_helper.from_array(np.float32(d ** -0.5), "scale")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_attention_graph_folds_the_transpose_and_matches_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    import edgert
    from edgert.compiler import compile_model

    path = _attention_onnx(tmp_path / "attention.onnx")
    sess = edgert.Session(compile_model(path, tmp_path / "a.edgert", threads=2), threads=2)
    ref = ort.InferenceSession(str(path))
    rng = np.random.default_rng(0)
    for n in (5, 67):
        feed = {x: rng.standard_normal((2, 2, n, 32)).astype(np.float32) for x in "qkv"}
        names = {t.name for t in sess.kernel_times(feed, repeats=1)}
        assert any("_bt_" in name for name in names), names      # K read as B^T ...
        assert not any(name.startswith(("transpose", "fused_transpose")) for name in names)
        got, want = sess.run(None, feed)[0], ref.run(None, feed)[0]
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
