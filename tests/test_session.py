"""Session API: onnxruntime-like introspection, input validation, threads."""

from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort
import pytest

import edgert
from edgert.backends.tvm_vm import VM_OVERHEAD
from edgert.errors import InputError

from conftest import random_input, rel_err


@pytest.fixture(scope="module")
def sess(mlp_artifact):
    return edgert.Session(mlp_artifact)


def test_introspection(sess):
    [i] = sess.get_inputs()
    [o] = sess.get_outputs()
    assert (i.name, i.shape, i.dtype, i.type) == ("x", ["batch", 20], "float32", "tensor(float)")
    assert (o.name, o.shape, o.dtype) == ("y", ["batch", 5], "float32")
    assert sess.backend == "tvm"


def test_output_selection(sess):
    x = random_input(["batch", 20], 2)
    [all_] = sess.run(None, {"x": x})
    [named] = sess.run(["y"], {"x": x})
    np.testing.assert_array_equal(all_, named)
    with pytest.raises(InputError, match="unknown output name.*'z'.*outputs are y"):
        sess.run(["z"], {"x": x})


@pytest.mark.parametrize("feed, message", [
    ({}, "missing input.*'x'"),
    ({"x": np.zeros((1, 20), np.float32), "extra": np.zeros(1)}, "unknown input.*'extra'"),
    ({"x": np.zeros((1, 20), np.float64)}, "input 'x': expected dtype float32, got float64"),
    ({"x": np.zeros((20,), np.float32)}, r"input 'x': expected rank 2 \(shape \[batch, 20\]\), got rank 1"),
    ({"x": np.zeros((1, 21), np.float32)}, "input 'x': axis 1 must be 20"),
    ({"x": [[0.0] * 20]}, "input 'x': expected a numpy array, got list"),
])
def test_bad_inputs_name_the_input(sess, feed, message):
    with pytest.raises(InputError, match=message):
        sess.run(None, feed)


def test_non_contiguous_input(sess):
    x = random_input(["batch", 40], 3)[:, ::2]
    assert not x.flags.c_contiguous
    [a] = sess.run(None, {"x": x})
    [b] = sess.run(None, {"x": np.ascontiguousarray(x)})
    np.testing.assert_array_equal(a, b)


def test_threads_share_a_session(mlp_artifact):
    sess = edgert.Session(mlp_artifact, threads=1)
    inputs = [random_input(["batch", 20], 1 + i % 3, seed=i) for i in range(8)]
    expected = [sess.run(None, {"x": x})[0] for x in inputs]
    results: dict[int, list] = {}
    errors = []

    def worker(k):
        try:
            results[k] = [sess.run(None, {"x": x})[0] for _ in range(20) for x in inputs]
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for outs in results.values():
        for j, out in enumerate(outs):
            np.testing.assert_array_equal(out, expected[j % len(inputs)])


def test_unknown_backend(mlp_artifact):
    with pytest.raises(InputError, match="unknown backend 'fpga'"):
        edgert.Session(mlp_artifact, backend="fpga")


def test_table_indices_are_range_checked(tmp_path):
    """An integer input feeding a Gather over a constant table (token ids) gets its valid range
    in the manifest; out-of-range values are an InputError naming the element, negative ones
    inside the range index from the end (ONNX Gather) on both backends."""
    import onnx
    from onnx import TensorProto as TP
    from onnx import helper, numpy_helper

    from edgert.compiler import compile_model

    table = np.arange(40, dtype=np.int8).reshape(10, 4)
    nodes = [helper.make_node("Reshape", ["ids", "flat"], ["ids_flat"]),
             helper.make_node("Gather", ["table", "ids_flat"], ["rows"], name="embedding", axis=0),
             helper.make_node("Gather", ["table", "col"], ["cols"], axis=1)]
    graph = helper.make_graph(
        nodes, "lookup",
        [helper.make_tensor_value_info("ids", TP.INT64, ["b", 3]),
         helper.make_tensor_value_info("col", TP.INT64, [2])],
        [helper.make_tensor_value_info("rows", TP.INT8, [None, 4]),
         helper.make_tensor_value_info("cols", TP.INT8, [10, 2])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array([-1]), "flat")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              tmp_path / "lookup.onnx")
    art = compile_model(tmp_path / "lookup.onnx", tmp_path / "lookup.edgert")
    sess = edgert.Session(art)
    ranges = {d["name"]: d.get("range") for d in sess.manifest["inputs"]}
    assert ranges["ids"] == {"min": -10, "max": 9, "why": "Gather embedding over 10 rows"}
    assert (ranges["col"]["min"], ranges["col"]["max"]) == (-4, 3)
    from edgert.model_info import inspect_path
    assert [d.get("range") for d in inspect_path(art)["inputs"]] == [ranges["ids"], ranges["col"]]
    ids, col = np.array([[0, -1, 9], [2, 3, -10]]), np.array([0, -4])
    for backend in ("tvm", "numba"):
        rows, cols = edgert.Session(art, backend=backend).run(None, {"ids": ids, "col": col})
        np.testing.assert_array_equal(rows, table[ids.reshape(-1)])
        np.testing.assert_array_equal(cols, table[:, col])
    with pytest.raises(InputError, match=r"input 'ids': values must lie in \[-10, 9\] "
                                         r"\(it indexes Gather embedding over 10 rows\), "
                                         r"got 10 at index \[1, 0\]"):
        sess.run(None, {"ids": np.array([[0, 1, 2], [10, 0, 0]]), "col": col})
    with pytest.raises(InputError, match=r"input 'col'.*got -5 at index \[1\]"):
        sess.run(None, {"ids": ids, "col": np.array([3, -5])})


def test_outputs_are_not_overwritten_by_later_calls(sess, tmp_path):
    """Inputs go through reused staging buffers and outputs are views of the VM's tensors:
    results of one call must survive the next call and later changes to the input, also when
    the graph returns an input unchanged."""
    import onnx
    from onnx import TensorProto as TP
    from onnx import helper

    from edgert.compiler import compile_model

    x1, x2 = random_input(["batch", 20], 2, seed=1), random_input(["batch", 20], 2, seed=2)
    [y1] = sess.run(None, {"x": x1})
    kept = y1.copy()
    [y2] = sess.run(None, {"x": x2})
    np.testing.assert_array_equal(y1, kept)
    assert not np.array_equal(y1, y2)

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "echo",
                              [helper.make_tensor_value_info("x", TP.FLOAT, ["n"])],
                              [helper.make_tensor_value_info("y", TP.FLOAT, ["n"])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              tmp_path / "echo.onnx")
    echo = edgert.Session(compile_model(tmp_path / "echo.onnx", tmp_path / "echo.edgert"))
    a = np.arange(5, dtype=np.float32)
    [b] = echo.run(None, {"x": a})
    a[:] = -1
    [c] = echo.run(None, {"x": np.zeros(5, np.float32)})
    np.testing.assert_array_equal(b, np.arange(5, dtype=np.float32))
    np.testing.assert_array_equal(c, np.zeros(5, np.float32))


def test_large_aligned_inputs_are_lent_and_empty_inputs_work(tmp_path):
    """A large aligned C-contiguous input goes to the kernels without a staging copy (an LLM's
    KV cache); unaligned ones and empty ones are staged. Results are right either way, and an
    echoed lent input is copied out."""
    import onnx
    from onnx import TensorProto as TP
    from onnx import helper

    from edgert.backends.tvm_vm import LEND_BYTES, aligned_empty
    from edgert.compiler import compile_model

    nodes = [helper.make_node("Identity", ["x"], ["y"]),
             helper.make_node("Add", ["x", "x"], ["z"])]
    graph = helper.make_graph(nodes, "echo2", [helper.make_tensor_value_info("x", TP.FLOAT, ["n"])],
                              [helper.make_tensor_value_info("y", TP.FLOAT, ["n"]),
                               helper.make_tensor_value_info("z", TP.FLOAT, ["n"])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              tmp_path / "echo2.onnx")
    sess = edgert.Session(compile_model(tmp_path / "echo2.onnx", tmp_path / "echo2.edgert"))
    n = LEND_BYTES // 4 + 7
    lent = aligned_empty((n,), np.float32)
    lent[:] = np.arange(n, dtype=np.float32)
    raw = np.empty(4 * n + 4, np.uint8)
    start = 4 if raw.ctypes.data % 64 == 0 else 0
    unaligned = raw[start:start + 4 * n].view(np.float32)
    unaligned[:] = lent
    assert unaligned.ctypes.data % 64 != 0
    staging = sess._backend._staging
    for x, staged in ((lent, False), (unaligned, True), (np.zeros(0, np.float32), True)):
        staging.clear()
        y, z = sess.run(None, {"x": x})
        assert (0 in staging) == staged
        want = x.copy()
        x[:] = -1                                    # the outputs do not alias the input
        np.testing.assert_array_equal(y, want)
        np.testing.assert_array_equal(z, 2 * want)


def test_kernel_times_name_each_kernel_of_a_run(sess, mlp_artifact, model_files):
    x = random_input(["batch", 20], 4)
    before = sess.run(None, {"x": x})[0]
    times = sess.kernel_times({"x": x}, repeats=5)
    matmuls = [t for t in times if t.name.startswith("matmul_fma")]
    assert sum(t.calls for t in matmuls) == 3                      # the MLP's three Linears
    assert all(t.calls >= 1 and t.ms >= 0 for t in times)
    # the VM's builtins (alloc, shapes) as one row, not one row each
    assert [t.name for t in times].count(VM_OVERHEAD) == 1
    assert not [t for t in times if t.name.startswith("vm.builtin.")]
    assert [t.ms for t in times] == sorted((t.ms for t in times), reverse=True)
    # timing the kernels (a second, instrumented VM over the same library, the session's
    # staging buffers) leaves the session's results as they were, and those are the model's
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], before)
    want = ort.InferenceSession(str(model_files["mlp"])).run(None, {"x": x})[0]
    assert rel_err(before, want) <= 1e-5
    with pytest.raises(InputError, match="repeats"):
        sess.kernel_times({"x": x}, repeats=0)
    with pytest.raises(InputError, match="missing input"):
        sess.kernel_times({}, repeats=1)
    with pytest.raises(InputError, match="tvm backend"):
        edgert.Session(mlp_artifact, backend="numba").kernel_times({"x": x})


def test_kernel_calls_in_call_order(sess, mlp_artifact):
    x = random_input(["batch", 20], 4)
    calls = sess.kernel_calls({"x": x}, runs=2)
    assert {c.run for c in calls} == {0, 1}
    for run in (0, 1):
        names = [c.name for c in calls if c.run == run]
        assert sum(n.startswith("matmul_fma") for n in names) == 3    # the three Linears
        assert not [n for n in names if n.startswith("vm.builtin.")]
    starts = [c.start_us for c in calls]
    assert starts == sorted(starts) and all(c.dur_us >= 0 for c in calls)
    assert [c.name for c in calls if c.run == 0] == [c.name for c in calls if c.run == 1]
    with pytest.raises(InputError, match="runs"):
        sess.kernel_calls({"x": x}, runs=0)
    with pytest.raises(InputError, match="tvm backend"):
        edgert.Session(mlp_artifact, backend="numba").kernel_calls({"x": x})
