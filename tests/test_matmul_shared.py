"""The shared float32 matmul kernel (``int_matmul_kernel(..., shared=True)``, the kernel of
``compiler/matmul_template.py`` with ``k`` and ``n`` as call arguments): one build serves every
shape, within 1e-5 of float64 over shapes with row, column and K remainders; the Relax rewrite
gives all of a model's float32 matmuls of one signature one kernel, and the compiled model
matches onnxruntime.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from edgert.compiler.schedule_intmatmul import (FLOAT_CONFIG, FLOAT_CONFIG_AVX512, FMA_AVX512,
                                                FMA_X86, chunk_blocks, int_matmul_kernel,
                                                pack_weight_words)
from edgert.targets import host_arch, host_cpu_features

HOST_AVX2 = host_arch() == "x86_64" and "avx2" in host_cpu_features()
HOST_AVX512 = HOST_AVX2 and "avx512f" in host_cpu_features()
needs_avx2 = pytest.mark.skipif(not HOST_AVX2, reason="needs an x86-64 CPU with AVX2")
TARGETS = {FMA_X86: {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell",
                     "num-cores": 2},
           FMA_AVX512: {"kind": "llvm", "mtriple": "x86_64-linux-gnu",
                        "mcpu": "skylake-avx512", "num-cores": 2}}
CONFIGS = {FMA_X86: FLOAT_CONFIG, FMA_AVX512: FLOAT_CONFIG_AVX512}
# (M, K, N): rows past the 6-row tile and the 48-row panel, columns past the 16/32-column
# block, K of 1 and odd K, N of 1; several column chunks per task
SHAPES = [(1, 1, 1), (5, 3, 17), (7, 64, 16), (49, 27, 33), (100, 96, 200), (53, 130, 72)]


def kernels(isa) -> dict:
    """Shared kernels of every kind, by name: a packed (constant) B, parallel over 1, 2 and
    4 column blocks a task and serial; an activation B, batched and transposed."""
    cfg = CONFIGS[isa]
    funcs = {}
    for nbc in (1, 2, 4):
        funcs[f"packed_c{nbc}"] = int_matmul_kernel(
            "float32", "float32", None, None, b_packed=True, cores=2, isa=isa, config=cfg,
            shared=True, nbc=nbc, name=f"packed_c{nbc}")
    funcs["serial"] = int_matmul_kernel("float32", "float32", None, None, b_packed=True,
                                        cores=1, isa=isa, config=cfg, shared=True, nbc=4,
                                        name="serial")
    for bt in (False, True):
        name = f"batched_bt{int(bt)}"
        funcs[name] = int_matmul_kernel("float32", "float32", None, None, b_packed=False,
                                        b_batched=True, cores=2, isa=isa, config=cfg,
                                        b_transposed=bt, shared=True, name=name)
    return funcs


def build(isa) -> object:
    import tvm

    return tvm.compile(tvm.IRModule(kernels(isa)), target=tvm.target.Target(TARGETS[isa])).mod


def run(lib, name: str, a: np.ndarray, b: np.ndarray, k: int, n: int) -> np.ndarray:
    import tvm

    c = tvm.runtime.tensor(np.full((a.shape[0], a.shape[1], n), np.nan, np.float32))
    lib[name](tvm.runtime.tensor(a), tvm.runtime.tensor(b), k, n, c)
    return c.numpy()


def check(got: np.ndarray, want: np.ndarray, what: object) -> None:
    err = np.abs(got - want).max()
    assert err <= 1e-5 * max(np.abs(want).max(), 1.0), (what, err)


def check_isa(isa) -> None:
    lib = build(isa)
    nr = CONFIGS[isa].nr
    rng = np.random.default_rng(3)
    for m, k, n in SHAPES:
        w = rng.standard_normal((k, n)).astype(np.float32)
        a = rng.standard_normal((2, m, k)).astype(np.float32)
        want = a.astype(np.float64) @ w
        packed = pack_weight_words(w, nr, 1)
        for name in ("packed_c1", "packed_c2", "packed_c4", "serial"):
            check(run(lib, name, a, packed, k, n), want, (name, m, k, n))
        b = rng.standard_normal((2, k, n)).astype(np.float32)
        want = np.matmul(a.astype(np.float64), b)
        check(run(lib, "batched_bt0", a, b, k, n), want, ("batched", m, k, n))
        bt = np.ascontiguousarray(np.swapaxes(b, 1, 2))
        check(run(lib, "batched_bt1", a, bt, k, n), want, ("transposed", m, k, n))


@needs_avx2
def test_shared_kernel_avx2_every_shape_within_rounding():
    check_isa(FMA_X86)


@pytest.mark.skipif(not HOST_AVX512, reason="needs an x86-64 CPU with AVX-512")
def test_shared_kernel_avx512_every_shape_within_rounding():
    check_isa(FMA_AVX512)


def test_shared_kernel_avx512_compiles_to_zmm_fma():
    """Where the CPU lacks AVX-512 the AVX-512 kernel is at least built, with zmm FMAs."""
    import tvm

    func = int_matmul_kernel("float32", "float32", None, None, b_packed=True, cores=2,
                             isa=FMA_AVX512, config=FLOAT_CONFIG_AVX512, shared=True, nbc=2)
    lib = tvm.compile(tvm.IRModule({"packed_c2": func.with_attr("global_symbol", "packed_c2")}),
                      target=tvm.target.Target(TARGETS[FMA_AVX512])).mod
    assert re.search(r"vfmadd\w+\s+[^\n]*%zmm", lib.inspect_source("asm"))


def test_shared_kernel_arguments_checked():
    with pytest.raises(ValueError, match="arguments"):
        int_matmul_kernel("float32", "float32", 8, None, b_packed=True, isa=FMA_X86,
                          config=FLOAT_CONFIG, shared=True)
    with pytest.raises(ValueError, match="static k and n"):
        int_matmul_kernel("float32", "float32", None, None, b_packed=True, isa=FMA_X86,
                          config=FLOAT_CONFIG)
    assert chunk_blocks(None, FLOAT_CONFIG, 2) == 1
    assert chunk_blocks(16 * 64, FLOAT_CONFIG, 2) == FLOAT_CONFIG.max_chunk
    assert chunk_blocks(16 * 3, FLOAT_CONFIG, 2) == 1


def model(path) -> None:
    """Four MatMuls, constant weights of four shapes (two large: the parallel kernel, two
    small: the serial one), and one activation x activation product."""
    import onnx

    rng = np.random.default_rng(4)
    dims = [(40, 300), (300, 64), (64, 9), (9, 70)]
    inits, nodes, src = [], [], "x"
    for i, (k, n) in enumerate(dims):
        inits.append(numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32),
                                             f"w{i}"))
        nodes.append(helper.make_node("MatMul", [src, f"w{i}"], [f"h{i}"]))
        src = f"h{i}"
    nodes.append(helper.make_node("MatMul", ["q", "kt"], ["qk"]))
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes, "g", [vi("x", TP.FLOAT, ["batch", 40]), vi("q", TP.FLOAT, ["batch", 5, 11]),
                     vi("kt", TP.FLOAT, ["batch", 11, 13])],
        [vi(src, TP.FLOAT, ["batch", 70]), vi("qk", TP.FLOAT, ["batch", 5, 13])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


@needs_avx2
def test_a_model_gets_one_kernel_per_signature(tmp_path):
    import onnxruntime as ort

    import edgert
    from edgert.artifact import read_artifact
    from edgert.compiler import compile_model

    model(tmp_path / "m.onnx")
    art = compile_model(tmp_path / "m.onnx", tmp_path / "m.edgert", threads=2,
                        target="x86-avx2")
    lib = read_artifact(art).members["lib/model.so"]
    names = {n for n in re.findall(rb"matmul_fma_x86_float32_\w+", lib)
             if not n.endswith(b"_compute_")}             # (TVM's parallel-loop bodies)
    assert not [n for n in names if re.search(rb"_k\d+_n\d+", n)], names
    assert b"matmul_fma_x86_float32_packed_parallel_c" in lib
    assert b"matmul_fma_x86_float32_packed_serial_c4" in lib
    assert len({re.sub(rb"_c\d$", b"", n) for n in names if b"packed" in n}) == 2, names
    sess, ref = edgert.Session(art), ort.InferenceSession(str(tmp_path / "m.onnx"))
    rng = np.random.default_rng(5)
    for batch in (1, 3, 50):
        feed = {"x": rng.standard_normal((batch, 40)).astype(np.float32),
                "q": rng.standard_normal((batch, 5, 11)).astype(np.float32),
                "kt": rng.standard_normal((batch, 11, 13)).astype(np.float32)}
        for got, want in zip(sess.run(None, feed), ref.run(None, feed)):
            check(got, want.astype(np.float64), batch)
