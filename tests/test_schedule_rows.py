"""The float32 row kernels of compiler/schedule_rows.py (softmax, layer norm) against float64
numpy: every tail length, symbolic and static row lengths, serial and parallel rows, the
AVX-512 width, and through a compiled ONNX graph against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

from edgert.compiler import schedule_rows

tvm = pytest.importorskip("tvm")

SOFTMAX_RTOL = 1e-5
"""Softmax, relative to float64, per element: the float32 sum of a row of 512 exponentials
is good to a few ulp times sqrt(512) (measured 2.4e-6; numpy's float32 softmax 1.5e-6)."""
LAYER_NORM_ATOL = 1e-6
"""Layer norm, absolute, relative to float64 and scaled by 1 + |reference| (measured 1.4e-7
of the largest output)."""


def _target(cores: int = 2, name: str | None = None):
    from edgert.targets import get_target, resolve_host

    target = resolve_host() if name is None else get_target(name)
    return tvm.target.Target(target.tvm_target_dict(num_cores=cores))


def _call(func, name, arrays, c_static, out_shape, target=None):
    lib = tvm.compile(tvm.IRModule({name: func}), target=target or _target())
    out = tvm.runtime.tensor(np.zeros(out_shape, np.float32))
    args = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays]
    args += [] if c_static else [out_shape[-1]]
    lib[name](*args, out)
    return out.numpy()


def softmax64(x: np.ndarray) -> np.ndarray:
    e = np.exp(x.astype(np.float64) - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def layer_norm64(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    x = x.astype(np.float64)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


@pytest.mark.parametrize("c,static,parallel,lanes", [
    (1, True, False, 8), (7, True, True, 8), (40, True, False, 8), (77, False, True, 8),
    (512, False, True, 8), (512, True, False, 16), (33, True, True, 4)])
def test_softmax_rows_match_float64(c, static, parallel, lanes):
    rng = np.random.default_rng(c)
    x = (rng.standard_normal((37, c)) * 6).astype(np.float32)
    x[3] -= 1e4                                     # a row far below zero: shifted by its max
    x[5, : c // 2] = -3.4e38                        # masked keys (finfo.min, as exporters mask)
    func = schedule_rows.softmax_kernel(c if static else None, lanes, parallel, "sm")
    got = _call(func, "sm", [x], static, x.shape)
    want = softmax64(x)
    assert (np.abs(got - want) / np.maximum(want, 1e-30)).max() <= SOFTMAX_RTOL \
        or np.abs(got - want).max() <= 1e-37       # exp's clamp: 1.2e-38 where numpy has 0
    assert np.abs(got.sum(-1) - 1).max() <= 1e-5


@pytest.mark.parametrize("c,static,parallel,lanes", [
    (1, True, False, 8), (40, True, True, 8), (96, False, False, 8), (384, True, True, 16),
    (45, False, True, 4)])
def test_layer_norm_rows_match_float64(c, static, parallel, lanes):
    rng = np.random.default_rng(c)
    x = (rng.standard_normal((29, c)) * 3 + 5).astype(np.float32)     # a mean far from 0
    gamma, beta = (rng.standard_normal(c).astype(np.float32) for _ in range(2))
    func = schedule_rows.layer_norm_kernel(c if static else None, 1e-5, lanes, parallel, "ln")
    got = _call(func, "ln", [x, gamma, beta], static, x.shape)
    want = layer_norm64(x, gamma, beta, 1e-5)
    assert (np.abs(got - want) / (1 + np.abs(want))).max() <= LAYER_NORM_ATOL


def test_avx512_kernels_compile_to_zmm():
    """The 16-lane kernels for the x86-avx512 target: run where the CPU has AVX-512, else
    compiled and checked for zmm arithmetic in the assembly."""
    from edgert.targets import host_cpu_features

    target = _target(2, "x86-avx512")
    func = schedule_rows.softmax_kernel(None, 16, True, "sm")
    lib = tvm.compile(tvm.IRModule({"sm": func}), target=target)
    asm = lib.mod.inspect_source("asm")
    assert "zmm" in asm and "vmaxps" in asm
    if "avx512f" not in host_cpu_features():
        return
    x = np.random.default_rng(0).standard_normal((9, 100)).astype(np.float32)
    got = _call(func, "sm", [x], False, x.shape, target)
    assert (np.abs(got - softmax64(x)) / softmax64(x)).max() <= SOFTMAX_RTOL


def _row_ops_onnx(path, n: int = 24, d: int = 40):
    """x [batch, n, d] -> LayerNormalization(last axis) -> MatMul -> Softmax(last axis)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(d).astype(np.float32), "g"),
             numpy_helper.from_array(rng.standard_normal(d).astype(np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal((d, n)).astype(np.float32), "w")]
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["ln"], axis=-1,
                              epsilon=1e-5),
             helper.make_node("MatMul", ["ln", "w"], ["s"]),
             helper.make_node("Softmax", ["s"], ["y"], axis=-1)]
    f = TensorProto.FLOAT
    graph = helper.make_graph(nodes, "rows", [helper.make_tensor_value_info("x", f,
                                                                            ["batch", n, d])],
                              [helper.make_tensor_value_info("y", f, ["batch", n, n])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_compiled_graph_runs_the_row_kernels_and_matches_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    import edgert
    from edgert.compiler import compile_model

    path = _row_ops_onnx(tmp_path / "rows.onnx")
    art = compile_model(path, tmp_path / "rows.edgert", threads=2)
    sess = edgert.Session(art, threads=2)
    x = np.random.default_rng(1).standard_normal((3, 24, 40)).astype(np.float32)
    names = {t.name for t in sess.kernel_times({"x": x}, repeats=1)}
    assert any(n.startswith("softmax_rows") for n in names), names
    assert any(n.startswith("layer_norm_rows") for n in names), names
    got = sess.run(None, {"x": x})[0]
    want = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    # two float32 implementations: the softmax bound above plus the matmul's rounding
    assert np.abs(got - want).max() <= 1e-5 * max(np.abs(want).max(), 1.0)
