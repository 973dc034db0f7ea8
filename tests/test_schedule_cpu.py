"""The CPU schedule rules (compiler/schedule_cpu.py): which kernels they take, what they do to
the loops, and that the scheduled kernels give the reference's values bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from edgert.compiler import schedule_cpu
from edgert.ops import requant, shiftgelu, shiftmax

from ophelpers import assert_bit_exact

tvm = pytest.importorskip("tvm")


def _target(cores: int):
    from edgert.targets import resolve_host

    return tvm.target.Target(resolve_host().tvm_target_dict(num_cores=cores))


def _prim_func(compute, shapes_dtypes, **attrs):
    """A PrimFunc of ``compute`` over placeholders; a str dim is a symbolic one (int64 var)."""
    from tvm import te, tirx

    sym = {}
    phs = []
    for i, (shape, dtype) in enumerate(shapes_dtypes):
        dims = [sym.setdefault(d, tirx.Var(d, "int64")) if isinstance(d, str) else d for d in shape]
        phs.append(te.placeholder(dims, dtype=dtype, name=f"in{i}"))
    out = compute(*phs, **attrs)
    return te.create_prim_func([*phs, out])


def _schedule(func, cores: int):
    target = _target(cores)
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    with target:
        mod = schedule_cpu.cpu_schedule_pass(target)(mod)
    return mod, target


def _run(mod, target, arrays, out_shape, out_dtype):
    lib = tvm.compile(mod, target=target)
    result = tvm.runtime.tensor(np.zeros(out_shape, out_dtype))
    lib["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays], result)
    return result.numpy()


def _requant_gelu(q, m, e, table, *, lo, hi, x0, n):
    """A fused chain as FuseTIR leaves it: Requant to int16, then ShiftGELU by table."""
    r = requant.te_compute(q, m, e, lo=lo, hi=hi, to="int16")
    return shiftgelu.te_compute(r, table, x0=x0, n=n)


@pytest.mark.parametrize("cores", [1, 2])
def test_elementwise_chain_is_inlined_vectorized_and_parallel(cores):
    rng = np.random.default_rng(0)
    q = rng.integers(-(2**20), 2**20, (2, 37, 64)).astype(np.int32)
    m, e = requant.narrow(*requant.params(rng.uniform(1e-4, 1e-2, 64)))
    p = shiftgelu.params(4 / 32767)
    table = shiftgelu.lookup_table("int16", **p)
    func = _prim_func(_requant_gelu, [(("b", "s", 64), "int32"), ((64,), "int32"),
                                      ((64,), "int64"), (table.shape, "int32")],
                      lo=-32767, hi=32767, **p)
    mod, target = _schedule(func, cores)
    scheduled = mod["main"]
    assert scheduled.attrs["tirx.is_scheduled"]
    text = scheduled.script()
    assert "T.vectorized" in text
    assert ("T.parallel" in text) == (cores > 1)
    assert text.count("T.sblock(") <= 2   # root + the one block left after inlining
    got = _run(mod, target, [q, m, e, table], q.shape, "int32")
    want = shiftgelu.reference(requant.reference(q, m, e, lo=-32767, hi=32767, to="int16"), **p)
    assert_bit_exact("scheduled chain", got, want)


def test_small_static_kernels_stay_on_one_thread():
    func = _prim_func(requant.te_compute, [((4, 64), "int32"), ((1,), "int64"), ((1,), "int64")],
                      lo=-127, hi=127)
    mod, _ = _schedule(func, 2)
    text = mod["main"].script()
    assert "T.vectorized" in text and "T.parallel" not in text


@pytest.mark.parametrize("with_table", [False, True])
def test_shiftmax_rows_in_parallel_bit_exact(with_table):
    rng = np.random.default_rng(1)
    q = rng.integers(-300, 300, (2, 3, 50, 50)).astype(np.int16)
    exclude = (rng.random((2, 1, 1, 50)) < 0.3).astype(np.int32)
    exclude[1] = 1                                   # a batch item with every element excluded
    p = shiftmax.params(0.01, 50)
    shapes = [(("b", 3, "s", "s"), "int16"), (("b", 1, 1, "s"), "int32")]
    arrays = [q, exclude]
    if with_table:
        table = shiftmax.exp_table("int16", x0=p["x0"], n=p["n"])
        shapes.append((table.shape, "int32"))
        arrays.append(table)
    func = _prim_func(shiftmax.te_compute, shapes, **p)
    mod, target = _schedule(func, 2)
    text = mod["main"].script()
    assert mod["main"].attrs["tirx.is_scheduled"] and "T.parallel" in text
    got = _run(mod, target, arrays, q.shape, "int16")
    assert_bit_exact("scheduled shiftmax", got, shiftmax.reference(q, exclude, **p))


def test_matmuls_are_left_to_other_schedules():
    from tvm import te

    def matmul(a, b):
        k = te.reduce_axis((0, 32), name="k")
        return te.compute((16, 8), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="mm")

    func = _prim_func(matmul, [((16, 32), "float32"), ((32, 8), "float32")])
    mod, _ = _schedule(func, 2)
    assert "tirx.is_scheduled" not in (mod["main"].attrs or {})


# ---------------------------------------------------------------- vectorizable exp and erf

def test_exp_te_accuracy_and_clamps():
    from tvm import te

    from edgert.compiler.schedule_cpu import exp_te

    x = te.placeholder((400003,), "float32")
    f = tvm.compile(te.create_prim_func([x, exp_te(x)]), target=_target(1))
    xs = np.concatenate([np.linspace(-87.3, 88.37, 200000), np.linspace(-20, 20, 200000),
                         [-1e4, 1e4, 0.0]]).astype(np.float32)
    out = tvm.runtime.tensor(np.zeros(xs.shape, np.float32))
    f(tvm.runtime.tensor(xs), out)
    got, want = out.numpy(), np.exp(xs[:-3].astype(np.float64))
    assert (np.abs(got[:-3] - want) / want).max() <= 1e-7            # measured 7.9e-8
    assert got[-1] == 1.0 and np.isfinite(got).all()                # exp(0); no inf at 1e4
    assert 0 < got[-3] < 2e-38 and 2e38 < got[-2] < 3e38           # the clamps


def test_fast_erf_accuracy():
    """The erf that ``vectorizable_erf`` puts in fp32 graphs (``topi.fast_erf``) against float64
    ``math.erf``: every float32 step of [-1, 1] and 2,000,001 points of [-6, 6] (erf is +-1 in
    float32 beyond), relative error. Regression pin: measured 3.33e-7 (a few ulp), pinned at
    3.6e-7 (+8%); libm's ``erff`` is within about 1 ulp."""
    import math

    from tvm import te, topi

    fine = np.arange(np.float32(-1), np.float32(1), np.float32(2**-22), dtype=np.float32)
    xs = np.concatenate([fine, np.linspace(-6, 6, 2_000_001, dtype=np.float32)])
    x = te.placeholder(xs.shape, "float32")
    f = tvm.compile(te.create_prim_func([x, topi.fast_erf(x)]), target=_target(1))
    out = tvm.runtime.tensor(np.zeros(xs.shape, np.float32))
    f(tvm.runtime.tensor(xs), out)
    want = np.frompyfunc(math.erf, 1, 1)(xs.astype(np.float64)).astype(np.float64)
    nz = want != 0
    rel = np.abs(out.numpy()[nz] - want[nz]) / np.abs(want[nz])
    assert rel.max() <= 3.6e-7, rel.max()


def test_softmax_and_erf_graph_vectorizable_and_close(tmp_path):
    """An fp32 graph with Softmax and Erf compiles to the polynomial kernels (the softmax as
    the row kernel of compiler/schedule_rows.py), within 1e-6 of onnxruntime (including
    saturating inputs)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto as TP
    from onnx import helper

    import edgert
    from edgert.artifact import read_artifact
    from edgert.compiler import compile_model

    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["p"], axis=-1), helper.make_node("Erf", ["x"], ["e"])],
        "g", [vi("x", TP.FLOAT, ["batch", 12, 128])],
        [vi("p", TP.FLOAT, ["batch", 12, 128]), vi("e", TP.FLOAT, ["batch", 12, 128])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              tmp_path / "m.onnx")
    art = compile_model(tmp_path / "m.onnx", tmp_path / "m.edgert", threads=1)
    lib = read_artifact(art).members["lib/model.so"]
    assert b"softmax_rows" in lib and b"fast_erf" in lib
    x = np.random.default_rng(0).standard_normal((2, 12, 128)).astype(np.float32) * 8
    x[0, 0, :5] = [-1e4, 1e4, 0, 30, -30]
    ours = edgert.Session(art).run(None, {"x": x})
    ref = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"x": x})
    for got, want in zip(ours, ref):
        assert np.abs(got - want).max() <= 1e-6 * max(1.0, np.abs(want).max())


# ---------------------------------------------------------------- parallel loops, symbolic


def _guard_cases():
    from tvm.script import tirx as T

    @T.prim_func(check_well_formed=False)
    def symbolic(a: T.handle, b: T.handle):
        n = T.int64()
        A = T.match_buffer(a, (n, 64), "float32")
        B = T.match_buffer(b, (n, 64), "float32")
        for i in T.parallel(n):
            for j in range(64):
                B[i, j] = A[i, j] * T.float32(2)

    @T.prim_func(check_well_formed=False)
    def static(a: T.handle, b: T.handle):
        A = T.match_buffer(a, (8, 64), "float32")
        B = T.match_buffer(b, (8, 64), "float32")
        for i in T.parallel(8):
            for j in range(64):
                B[i, j] = A[i, j] * T.float32(2)

    @T.prim_func(check_well_formed=False)
    def heavy(a: T.handle, b: T.handle):
        n = T.int64()
        A = T.match_buffer(a, (n, 128, 256), "float32")
        B = T.match_buffer(b, (n, 128, 256), "float32")
        for i in T.parallel(n):
            for j, k in T.grid(128, 256):
                B[i, j, k] = A[i, j, k] + T.float32(1)

    return symbolic, static, heavy


def test_symbolic_parallel_loops_are_split_at_run_time():
    """A parallel loop over a symbolic extent runs serially below PARALLEL_MIN_WORK element
    operations (an LLM decode step: sequence = 1); static extents and loops whose one
    iteration is already large are left as the schedule made them."""
    from tvm import tirx

    symbolic, static, heavy = _guard_cases()
    guarded = schedule_cpu.guard_parallel_loops(symbolic)
    body = guarded.body
    assert isinstance(body, tirx.IfThenElse)
    assert body.then_case.kind == tirx.ForKind.PARALLEL
    assert body.else_case.kind == tirx.ForKind.SERIAL
    assert str(body.condition) == f"n >= T.int64({schedule_cpu.PARALLEL_MIN_WORK // 64})"
    assert schedule_cpu.guard_parallel_loops(static).same_as(static)
    assert schedule_cpu.guard_parallel_loops(heavy).same_as(heavy)


def _parallel_launches(artifact, lib_path, x: np.ndarray) -> tuple[list[int], np.ndarray]:
    """Run ``artifact``'s library (written to ``lib_path``, loaded by TVM) on ``x`` with its
    ``__TVMBackendParallelLaunch`` slot (the pointer through which every parallel loop of the
    library reaches TVM's thread pool, set when TVM loads it) wrapped by a counter; returns
    the task counts of the launches and the output."""
    import ctypes

    from tvm import relax

    from edgert.artifact import read_artifact
    from edgert.compiler.pipeline import LIB_MEMBER

    lib_path.write_bytes(read_artifact(artifact).members[LIB_MEMBER])
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib_path)), tvm.cpu())
    slot = ctypes.c_void_p.in_dll(ctypes.CDLL(str(lib_path)), "__TVMBackendParallelLaunch")
    launch = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)
    real, seen = launch(slot.value), []

    def counting(flambda, cdata, num_task):
        seen.append(num_task)
        return real(flambda, cdata, num_task)

    hook = launch(counting)
    slot.value = ctypes.cast(hook, ctypes.c_void_p).value
    try:
        out = vm["main"](tvm.runtime.tensor(x)).numpy()
    finally:
        slot.value = ctypes.cast(real, ctypes.c_void_p).value
    return seen, out


@pytest.mark.parametrize("rows", [1, 3, 700])
def test_guarded_kernels_compute_the_same(tmp_path, rows):
    """Both branches of a guarded kernel give the same results (compiled through the CPU TIR
    pipeline, rows below and above the threshold), and the branch meant for ``rows`` is the one
    that ran: the parallel branch launches on TVM's thread pool, the serial one does not
    (launches counted at the library's launch slot; without the guard every size launches)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto as TP
    from onnx import helper

    from edgert import Session
    from edgert.compiler import compile_model

    path = tmp_path / "add.onnx"
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"]),
             helper.make_node("ReduceMean", ["sq"], ["ms"], axes=[-1], keepdims=1),
             helper.make_node("Add", ["x", "ms"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TP.FLOAT, ["n", 96])], [helper.make_tensor_value_info("y", TP.FLOAT, ["n", 96])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    x = np.random.default_rng(rows).standard_normal((rows, 96)).astype(np.float32)
    art = compile_model(path, tmp_path / "add.edgert", threads=2)
    got = Session(art, threads=2).run(None, {"x": x})[0]
    want = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    launches, out = _parallel_launches(art, tmp_path / "model.so", x)
    np.testing.assert_array_equal(out, got)
    if rows * 96 >= schedule_cpu.PARALLEL_MIN_WORK:       # 700 rows: the parallel branch
        assert launches, "the parallel branch did not run"
    else:                                                 # 1 and 3 rows: the serial one
        assert launches == [], f"a parallel loop launched at {rows} rows: {launches}"
