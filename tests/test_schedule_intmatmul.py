"""The matmul kernels of ``compiler/schedule_intmatmul.py``: integer ones (x86 AVX2 ``vpmaddwd``,
aarch64 dotprod ``sdot``) are bit-exact; float32 ones (FMA) are within 1e-5 of float64.

x86 kernels are compared with ``intmatmul.reference`` (the normative numpy IntMatMul) over a grid of
shapes with ragged M, K and N: constant weights (packed at compile time), activation x
activation (batched and broadcast, int8/int16), symbolic dims; then through the Relax rewrite
and the whole pipeline (``compile_model``), where the library must contain ``vpmaddwd``.
Several kernels share one ``tvm.compile`` to keep the file fast (~0.25 s a kernel). The sdot
kernels (int8 x int8) are checked in the rpi5 assembly, and run under qemu-aarch64 against the
reference and the host build over ragged shapes.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from edgert.compiler import schedule_intmatmul
from edgert.compiler.schedule_intmatmul import (AVX2, FLOAT_CONFIG, FLOAT_CONFIG_AVX512,
                                                FMA_AVX512, FMA_NEON, FMA_X86, SDOT, VNNI,
                                                MatmulConfig, int_matmul_kernel, pack_weight,
                                                pack_weight_words)
from edgert.ops import DOMAIN, intmatmul
from edgert.targets import TARGETS, host_arch, host_cpu_features, resolve_host

from ophelpers import assert_bit_exact, integer_model, skip_unless_opted_in

HOST_AVX2 = host_arch() == "x86_64" and "avx2" in host_cpu_features()
HOST_VNNI = HOST_AVX2 and "avx512_vnni" in host_cpu_features()
needs_avx2 = pytest.mark.skipif(not HOST_AVX2, reason="needs an x86-64 CPU with AVX2")
TVM_TARGET = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell", "num-cores": 2}

MS, KS, NS = (1, 3, 17, 128), (1, 7, 64, 384, 1536), (1, 5, 64, 384)


def operand(rng: np.random.Generator, dtype: str, shape: tuple, k: int, other: str) -> np.ndarray:
    """Random operand over the full range of ``dtype``, narrowed only where K terms of
    |a| * |b| could leave int32 (the bound the quantizer proves for real graphs)."""
    info = np.iinfo(dtype)
    peer = np.iinfo(other).max + 1
    amax = min(info.max, (2**31 - 1) // (max(k, 1) * peer))
    x = rng.integers(-amax - (amax == info.max), amax + 1, shape, dtype=np.int64)
    flat = x.reshape(-1)
    flat[: min(2, flat.size)] = [-amax - (amax == info.max), amax][: min(2, flat.size)]
    return x.astype(dtype)


def build(funcs: dict) -> object:
    """Compile PrimFuncs together; returns the runtime module."""
    import tvm

    return tvm.compile(tvm.IRModule(funcs), target=tvm.target.Target(TVM_TARGET)).mod


def call(lib, name: str, a: np.ndarray, b: np.ndarray, out_shape: tuple, *scalars,
         dtype: type = np.int32) -> np.ndarray:
    import tvm

    c = tvm.runtime.tensor(np.zeros(out_shape, dtype))
    lib[name](tvm.runtime.tensor(a), tvm.runtime.tensor(b), *scalars, c)
    return c.numpy()


# ---------------------------------------------------------------- layout and target choice

def test_pack_weight_layout():
    b = np.arange(-40, 37, dtype=np.int8).reshape(7, 11)
    p = pack_weight(b, nr=8)
    assert p.shape == (2, 4, 8, 2) and p.dtype == np.int16
    for nb, kp, j, h in np.ndindex(*p.shape):
        k, n = 2 * kp + h, nb * 8 + j
        assert p[nb, kp, j, h] == (b[k, n] if k < 7 and n < 11 else 0)
    pairs = pack_weight_words(b, nr=8)                   # the kernel's view: one pair an int32
    assert pairs.shape == (2, 4, 8) and pairs.dtype == np.int32
    assert np.array_equal((pairs << 16 >> 16).astype(np.int16), p[..., 0])
    assert np.array_equal((pairs >> 16).astype(np.int16), p[..., 1])


def test_pack_weight_quads():
    b = np.arange(-60, 57, dtype=np.int8).reshape(9, 13)
    p = pack_weight(b, nr=4, group=4)
    assert p.shape == (4, 3, 4, 4) and p.dtype == np.int8
    for nb, kq, j, h in np.ndindex(*p.shape):
        k, n = 4 * kq + h, nb * 4 + j
        assert p[nb, kq, j, h] == (b[k, n] if k < 9 and n < 13 else 0)
    words = pack_weight_words(b, nr=4, group=4)       # little-endian: element h in byte h
    assert words.shape == (4, 3, 4) and np.array_equal(words.view(np.int8).reshape(p.shape), p)
    with pytest.raises(ValueError, match="int8"):
        pack_weight(b.astype(np.int16), group=4)


def test_kernel_isa_per_target():
    chosen = {name: schedule_intmatmul.target_isa(t) for name, t in TARGETS.items()}
    assert {n for n, isa in chosen.items() if isa is AVX2} == {"x86-avx2"}
    assert chosen["x86-avx512"] == (VNNI, AVX2)       # VNNI first, where it applies
    assert {n for n, isa in chosen.items() if isa is SDOT} == {"rpi5"}   # dotprod, not CUDA
    assert chosen["aarch64"] is None                  # generic NEON: no dotprod


def test_generic_arm_keeps_the_generic_compute(monkeypatch):
    import tvm

    from edgert.compiler import lower

    monkeypatch.setattr(schedule_intmatmul, "schedule_int_matmuls",
                        lambda *a, **k: pytest.fail("integer kernels used without dotprod"))
    mod = tvm.IRModule()                 # no LutMatMul either: the Arm LUT rewrite leaves it
    assert lower._schedule_for_cpu(mod, TARGETS["aarch64"], None) is mod


def test_config_is_checked():
    with pytest.raises(ValueError):
        MatmulConfig(nr=12)
    with pytest.raises(ValueError):
        int_matmul_kernel("int32", "int8", 4, 4, b_packed=True)
    with pytest.raises(ValueError, match="sdot"):
        int_matmul_kernel("int16", "int8", 4, 4, b_packed=True, isa=SDOT)


# ---------------------------------------------------------------- kernels against the reference

@needs_avx2
@pytest.mark.parametrize("a_dtype, cores", [("int8", 2), ("int16", 2), ("int8", 1)])
def test_constant_weight_kernels_bit_exact(a_dtype, cores):
    """Every (K, N) of the grid as its own specialized kernel, every M through each, on 1
    and 2 cores (1 to 4 column chunks, each reading the A panels packed before the tasks)."""
    funcs = {f"w_{k}_{n}": int_matmul_kernel(a_dtype, "int16", k, n, b_packed=True, cores=cores,
                                             name=f"w_{k}_{n}") for k in KS for n in NS}
    lib = build(funcs)
    rng = np.random.default_rng(1)
    for k in KS:
        for n in NS:
            w = operand(rng, "int8", (k, n), k, a_dtype)
            packed = pack_weight_words(w)
            for m in MS:
                a = operand(rng, a_dtype, (1, m, k), k, "int8")
                got = call(lib, f"w_{k}_{n}", a, packed, (1, m, n))
                assert_bit_exact(f"{a_dtype} M={m} K={k} N={n}", got, intmatmul.reference(a, w))


@needs_avx2
def test_activation_kernels_bit_exact():
    """B an activation: batched (attention) and broadcast, int8/int16 on both sides."""
    cases = [  # (a, b, batched, k, n)
        ("int8", "int8", True, 8, 17), ("int16", "int8", True, 17, 8),
        ("int16", "int16", True, 64, 5), ("int8", "int16", False, 7, 64),
        ("int8", "int8", False, 384, 384),
    ]
    funcs = {f"act{i}": int_matmul_kernel(a, b, k, n, b_packed=False, b_batched=bat, cores=2,
                                          name=f"act{i}")
             for i, (a, b, bat, k, n) in enumerate(cases)}
    lib = build(funcs)
    rng = np.random.default_rng(2)
    for i, (a_dt, b_dt, batched, k, n) in enumerate(cases):
        for batch, m in [(1, 1), (3, 17), (8, 3), (2, 128)]:
            a = operand(rng, a_dt, (batch, m, k), k, b_dt)
            b = operand(rng, b_dt, (batch if batched else 1, k, n), k, a_dt)
            want = intmatmul.reference(a, b if batched else b[0])
            assert_bit_exact(f"case {i} batch={batch} M={m}", call(lib, f"act{i}", a, b,
                                                                    (batch, m, n)), want)


@needs_avx2
def test_symbolic_k_and_n_kernel_bit_exact():
    """K and N unknown at compile time (dynamic sequence length): passed as arguments."""
    lib = build({"sym": int_matmul_kernel("int16", "int8", None, None, b_packed=False,
                                          b_batched=True, cores=2, name="sym")})
    rng = np.random.default_rng(3)
    for batch, m, k, n in [(2, 17, 17, 8), (3, 1, 1, 1), (1, 128, 384, 64), (4, 3, 7, 5)]:
        a = operand(rng, "int16", (batch, m, k), k, "int8")
        b = operand(rng, "int8", (batch, k, n), k, "int16")
        assert_bit_exact(f"{batch}x{m}x{k}x{n}", call(lib, "sym", a, b, (batch, m, n), k, n),
                         intmatmul.reference(a, b))


# ---------------------------------------------------------------- the Relax rewrite

def vi(name: str, elem: int, shape: list):
    return helper.make_tensor_value_info(name, elem, shape)


def attention_model(seq: int | str):
    """Linear (MatMulInteger, constant int8 weight) -> Q·K^T (batched 4-D int8 x int8) ->
    P·V (IntMatMul int16 x int8) -> Linear (IntMatMul int16 x constant int8 weight)."""
    rng = np.random.default_rng(4)
    w1 = rng.integers(-127, 128, (24, 40), dtype=np.int8)
    w2 = rng.integers(-127, 128, (8, 33), dtype=np.int8)
    nodes = [
        helper.make_node("MatMulInteger", ["x", "w1"], ["lin1"], name="lin1"),
        helper.make_node("MatMulInteger", ["q", "kt"], ["scores"], name="scores"),
        helper.make_node("IntMatMul", ["p", "v"], ["ctx"], name="ctx", domain=DOMAIN),
        helper.make_node("IntMatMul", ["ctx16", "w2"], ["lin2"], name="lin2", domain=DOMAIN),
    ]
    ins = [vi("x", TP.INT8, ["batch", seq, 24]), vi("q", TP.INT8, ["batch", 3, seq, 8]),
           vi("kt", TP.INT8, ["batch", 3, 8, seq]), vi("p", TP.INT16, ["batch", 3, seq, seq]),
           vi("v", TP.INT8, ["batch", 3, seq, 8]), vi("ctx16", TP.INT16, ["batch", seq, 8])]
    outs = [vi("lin1", TP.INT32, ["batch", seq, 40]),
            vi("scores", TP.INT32, ["batch", 3, seq, seq]),
            vi("ctx", TP.INT32, ["batch", 3, seq, 8]), vi("lin2", TP.INT32, ["batch", seq, 33])]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")]

    def feed(batch: int, s: int) -> dict[str, np.ndarray]:
        r = np.random.default_rng(batch * 100 + s)
        p_max = (2**31 - 1) // (s * 128)
        return {"x": r.integers(-128, 128, (batch, s, 24), dtype=np.int8),
                "q": r.integers(-128, 128, (batch, 3, s, 8), dtype=np.int8),
                "kt": r.integers(-128, 128, (batch, 3, 8, s), dtype=np.int8),
                "p": r.integers(-min(p_max, 32768), min(p_max, 32767) + 1, (batch, 3, s, s),
                                dtype=np.int16),
                "v": r.integers(-128, 128, (batch, 3, s, 8), dtype=np.int8),
                "ctx16": r.integers(-32768, 32768, (batch, s, 8), dtype=np.int16)}

    def oracle(f: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [intmatmul.reference(f["x"], w1), intmatmul.reference(f["q"], f["kt"]),
                intmatmul.reference(f["p"], f["v"]), intmatmul.reference(f["ctx16"], w2)]

    return integer_model(nodes, ins, outs, inits), feed, oracle


@needs_avx2
@pytest.mark.parametrize("seq", [17, "seq"])
def test_relax_rewrite_bit_exact_and_uses_vpmaddwd(seq):
    import tvm
    from tvm import relax

    from edgert.compiler.lower import to_relax

    model, feed, oracle = attention_model(seq)
    target = tvm.target.Target(TVM_TARGET)
    mod = schedule_intmatmul.schedule_int_matmuls(to_relax(model), target)
    names = {gv.name_hint for gv in mod.get_global_vars()}
    kernels = {n for n in names if n.startswith("int_matmul_x86")}
    assert len(kernels) == 4 and not names & {"matmul_integer", "intmatmul"}, names
    assert any("packed" in n for n in kernels) and any("batched" in n for n in kernels)
    ex = tvm.compile(mod, target=target)
    asm = ex.mod.imports[0].inspect_source("asm")
    assert "vpmaddwd" in asm
    vm = relax.VirtualMachine(ex, tvm.cpu())
    for batch, s in [(1, 17), (3, 17)] + ([(2, 5), (1, 40)] if seq == "seq" else []):
        f = feed(batch, s)
        got = vm["main"](*[tvm.runtime.tensor(f[k]) for k in ("x", "q", "kt", "p", "v", "ctx16")])
        for i, (g, w) in enumerate(zip(got, oracle(f))):
            assert_bit_exact(f"output {i} batch={batch} seq={s}", g.numpy(), w)


@needs_avx2
def test_compile_model_builds_the_kernels(tmp_path):
    """The whole pipeline (build_library for the host target) uses the kernels, bit-exact."""
    import onnx

    import edgert
    from edgert.artifact import read_artifact
    from edgert.compiler import compile_model
    from edgert.compiler.pipeline import LIB_MEMBER

    model, feed, oracle = attention_model(17)
    path = tmp_path / "att.onnx"
    onnx.save(model, path)
    art = compile_model(path, tmp_path / "att.edgert", threads=2)
    assert b"int_matmul_x86" in read_artifact(art).members[LIB_MEMBER]
    session = edgert.Session(art, threads=2)
    for batch in (1, 2):
        f = feed(batch, 17)
        for i, (g, w) in enumerate(zip(session.run(None, f), oracle(f))):
            assert_bit_exact(f"output {i} batch={batch}", g, w)


# ---------------------------------------------------------------- aarch64 sdot

def int8_matmul_model(seq: int | str):
    """int8 x int8 only, ragged: MatMulInteger with a constant weight (K = 37, N = 21) and a
    batched activation product (4-D, K = 7, N = seq)."""
    rng = np.random.default_rng(7)
    w = rng.integers(-128, 128, (37, 21), dtype=np.int8)
    nodes = [helper.make_node("MatMulInteger", ["x", "w"], ["lin"], name="lin"),
             helper.make_node("MatMulInteger", ["q", "kt"], ["qk"], name="qk")]
    ins = [vi("x", TP.INT8, ["batch", seq, 37]), vi("q", TP.INT8, ["batch", 2, seq, 7]),
           vi("kt", TP.INT8, ["batch", 2, 7, seq])]
    outs = [vi("lin", TP.INT32, ["batch", seq, 21]), vi("qk", TP.INT32, ["batch", 2, seq, seq])]

    def feed(batch: int, s: int) -> dict[str, np.ndarray]:
        r = np.random.default_rng(batch * 10 + s)
        f = {"x": r.integers(-128, 128, (batch, s, 37), dtype=np.int8),
             "q": r.integers(-128, 128, (batch, 2, s, 7), dtype=np.int8),
             "kt": r.integers(-128, 128, (batch, 2, 7, s), dtype=np.int8)}
        f["x"].reshape(-1)[:2] = [-128, 127]
        return f

    def oracle(f: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [intmatmul.reference(f["x"], w), intmatmul.reference(f["q"], f["kt"])]

    return integer_model(nodes, ins, outs, [numpy_helper.from_array(w, "w")]), feed, oracle


def test_rpi5_int8_matmuls_use_sdot():
    """On rpi5 (dotprod) the int8 x int8 matmuls become sdot kernels; int16 ones stay generic."""
    import tvm

    from edgert.compiler.lower import to_relax

    model, _, _ = attention_model(17)
    target = tvm.target.Target(TARGETS["rpi5"].tvm_target_dict(num_cores=2))
    mod = schedule_intmatmul.schedule_int_matmuls(to_relax(model), target, isa=SDOT)
    names = {gv.name_hint for gv in mod.get_global_vars()}
    kernels = {n for n in names if n.startswith("int_matmul_sdot")}
    assert len(kernels) == 2 and "matmul_integer" not in names and "intmatmul" in names, names
    assert any("packed" in n for n in kernels) and any("batched" in n for n in kernels)
    asm = tvm.compile(mod, target=target).mod.imports[0].inspect_source("asm")
    assert len(re.findall(r"\bsdot\s+v\d+\.4s", asm)) >= 8


@pytest.mark.parametrize("seq", [17, "seq"])
def test_sdot_kernels_under_qemu_bit_exact(qemu_env, tmp_path, seq):
    if seq != "seq":    # static-shape sdot kernels also run in test_qemu_rpi5's int-only ViT
        skip_unless_opted_in("EDGERT_QEMU", "the sdot kernels at a static sequence of 17")
    import onnx

    import edgert
    from edgert.artifact import read_artifact
    from edgert.targets.qemu import run_under_qemu

    from conftest import rpi5_and_host

    model, feed, oracle = int8_matmul_model(seq)
    onnx.save(model, tmp_path / "m.onnx")
    rpi5, host = rpi5_and_host(tmp_path / "m.onnx", tmp_path, "sdot")
    assert b"int_matmul_sdot" in read_artifact(rpi5).members["lib/model.so"]
    for batch, s in [(1, 17), (3, 17)] + ([(1, 1), (2, 5), (1, 40)] if seq == "seq" else []):
        f = feed(batch, s)
        got = run_under_qemu(rpi5, f)
        for i, (g, w, r) in enumerate(zip(got, edgert.Session(host).run(None, f), oracle(f))):
            assert_bit_exact(f"output {i} batch={batch} seq={s}: rpi5 vs oracle", g, r)
            assert_bit_exact(f"output {i} batch={batch} seq={s}: rpi5 vs host", g, w)


# ---------------------------------------------------------------- float32 (FMA)

def test_float_isa_per_target():
    chosen = {name: schedule_intmatmul.float_isa(t) for name, t in TARGETS.items()}
    assert {n for n, isa in chosen.items() if isa is FMA_X86} == {"x86-avx2"}
    assert {n for n, isa in chosen.items() if isa is FMA_AVX512} == {"x86-avx512"}
    assert {n for n, isa in chosen.items() if isa is FMA_NEON} == {"aarch64", "rpi5"}


FLOAT_ISAS = [(FMA_X86, FLOAT_CONFIG, needs_avx2),
              (FMA_AVX512, FLOAT_CONFIG_AVX512, pytest.mark.skipif(
                  "avx512f" not in host_cpu_features(), reason="needs AVX-512"))]


@pytest.mark.parametrize("isa,config", [pytest.param(i, c, marks=m, id=i.name)
                                        for i, c, m in FLOAT_ISAS])
def test_float_kernels_within_rounding(isa, config):
    """Constant (packed) and activation (batched) float32 B over ragged shapes, against float64."""
    cases = [(1, 5), (7, 64), (64, 33), (384, 200)]
    funcs = {}
    for k, n in cases:
        for packed in (True, False):
            name = f"f_{k}_{n}_{packed}"
            funcs[name] = int_matmul_kernel("float32", "float32", k, n, b_packed=packed,
                                            b_batched=not packed, cores=2, isa=isa,
                                            config=config, name=name)
    target = {**TVM_TARGET, "mcpu": "skylake-avx512"} if isa is FMA_AVX512 else TVM_TARGET
    import tvm

    lib = tvm.compile(tvm.IRModule(funcs), target=tvm.target.Target(target)).mod
    assert re.search(r"vfmadd\w+\s+%" + ("zmm" if isa is FMA_AVX512 else "ymm"),
                     lib.inspect_source("asm"))
    rng = np.random.default_rng(8)
    for k, n in cases:
        w = rng.standard_normal((k, n)).astype(np.float32)
        for batch, m in [(1, 1), (2, 5), (1, 17), (3, 128)]:
            a = rng.standard_normal((batch, m, k)).astype(np.float32)
            b = rng.standard_normal((batch, k, n)).astype(np.float32)
            for packed, bb, want in [(True, pack_weight_words(w, config.nr, 1),
                                      a.astype(np.float64) @ w),
                                     (False, b, np.matmul(a.astype(np.float64), b))]:
                got = call(lib, f"f_{k}_{n}_{packed}", a, bb, (batch, m, n), dtype=np.float32)
                err = np.abs(got - want).max()
                assert err <= 1e-5 * np.abs(want).max(), (k, n, batch, m, packed, err)


@needs_avx2
def test_float_matmuls_rewritten_and_use_fma(tmp_path):
    """compile_model on an fp32 graph (constant weight, broadcast and batched activation
    products): every MatMul runs our kernel, with FMA, within rounding of onnxruntime."""
    import onnx
    import onnxruntime as ort

    import edgert
    from edgert.artifact import read_artifact
    from edgert.compiler import compile_model

    rng = np.random.default_rng(9)
    w = rng.standard_normal((37, 21)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["lin"]),
             helper.make_node("MatMul", ["q", "kt"], ["qk"])]
    ins = [vi("x", TP.FLOAT, ["batch", "seq", 37]), vi("q", TP.FLOAT, ["batch", 2, "seq", 7]),
           vi("kt", TP.FLOAT, ["batch", 2, 7, "seq"])]
    outs = [vi("lin", TP.FLOAT, ["batch", "seq", 21]), vi("qk", TP.FLOAT, ["batch", 2, "seq", "seq"])]
    model = helper.make_model(helper.make_graph(nodes, "g", ins, outs,
                                                [numpy_helper.from_array(w, "w")]),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "m.onnx")
    art = compile_model(tmp_path / "m.onnx", tmp_path / "m.edgert", threads=2)
    lib = read_artifact(art).members["lib/model.so"]
    isa = schedule_intmatmul.float_isa(resolve_host())
    # (one shared kernel per signature: 37 x 21 is under parallel_min_kn, the serial one)
    assert f"matmul_{isa.name}_float32_packed_serial_c4".encode() in lib and b"batched" in lib
    sess, ref = edgert.Session(art), ort.InferenceSession(str(tmp_path / "m.onnx"))
    for batch, s in [(1, 1), (2, 17), (1, 40)]:
        f = {"x": rng.standard_normal((batch, s, 37)).astype(np.float32),
             "q": rng.standard_normal((batch, 2, s, 7)).astype(np.float32),
             "kt": rng.standard_normal((batch, 2, 7, s)).astype(np.float32)}
        for got, want in zip(sess.run(None, f), ref.run(None, f)):
            assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


# ---------------------------------------------------------------- x86 AVX-512 VNNI (vpdpbusd)

def test_vnni_packed_weight_carries_the_offset_correction():
    b = np.random.default_rng(3).integers(-128, 128, (9, 21)).astype(np.int8)
    words = pack_weight_words(b, nr=16, group=4, a_offset=True)
    assert words.shape == (2, 3 + 1, 16)
    np.testing.assert_array_equal(words[:, :3], pack_weight_words(b, nr=16, group=4))
    corr = words[:, 3].reshape(-1)
    np.testing.assert_array_equal(corr[:21], -128 * b.astype(np.int64).sum(0))
    assert not corr[21:].any()


def test_vnni_kernels_bit_exact_and_use_vpdpbusd():
    """int8 x constant int8 through ``vpdpbusd`` (A offset by 128, corrected by B's extra
    row): the full int8 range (-128 included) over ragged M, K and N."""
    import tvm

    shapes = [(k, n) for k in (1, 7, 64, 384, 1536) for n in (1, 5, 64, 384)]
    funcs = {f"v_{k}_{n}": int_matmul_kernel("int8", "int32", k, n, b_packed=True, cores=2,
                                             isa=VNNI, name=f"v_{k}_{n}") for k, n in shapes}
    lib = tvm.compile(tvm.IRModule(funcs), target=tvm.target.Target(
        {**TVM_TARGET, "mcpu": "cascadelake"})).mod
    assert "vpdpbusd" in lib.inspect_source("asm")
    with pytest.raises(ValueError, match="constant"):
        int_matmul_kernel("int8", "int8", 8, 8, b_packed=False, isa=VNNI)
    if not HOST_VNNI:
        pytest.skip("running it needs an x86-64 CPU with AVX-512 VNNI")
    rng = np.random.default_rng(4)
    for k, n in shapes:
        w = operand(rng, "int8", (k, n), k, "int8")
        w.reshape(-1)[-1] = -128
        packed = pack_weight_words(w, group=4, a_offset=True)
        for m in MS:
            a = operand(rng, "int8", (2, m, k), k, "int8")
            a.reshape(-1)[-1] = -128
            got = call(lib, f"v_{k}_{n}", a, packed, (2, m, n))
            assert_bit_exact(f"vnni M={m} K={k} N={n}", got, intmatmul.reference(a, w))


@pytest.mark.skipif(not HOST_VNNI, reason="needs an x86-64 CPU with AVX-512 VNNI")
def test_vnni_in_the_pipeline(tmp_path):
    """On x86-avx512 the int8 x constant-int8 matmul runs the VNNI kernel and the activation x
    activation one the AVX2 kernel, bit-exact."""
    import onnx

    import edgert
    from edgert.artifact import read_artifact
    from edgert.compiler import compile_model
    from edgert.compiler.pipeline import LIB_MEMBER

    model, feed, oracle = int8_matmul_model("seq")
    onnx.save(model, tmp_path / "m.onnx")
    art = compile_model(tmp_path / "m.onnx", tmp_path / "m.edgert", target="x86-avx512",
                        threads=2)
    lib = read_artifact(art).members[LIB_MEMBER]
    assert b"int_matmul_vnni_int8_packed" in lib and b"int_matmul_x86_int8_int8" in lib
    session = edgert.Session(art, threads=2)
    for batch, seq in ((1, 1), (2, 17), (1, 64)):
        f = feed(batch, seq)
        for i, (g, w) in enumerate(zip(session.run(None, f), oracle(f))):
            assert_bit_exact(f"output {i} batch={batch} seq={seq}", g, w)
