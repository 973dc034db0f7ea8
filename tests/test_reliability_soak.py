"""Long runs and concurrency: memory over a soak, threads sharing a session, sessions in
parallel, and a compile interrupted by SIGINT / SIGTERM (exit 130 / 143, nothing left behind).

The soak runs 2,000 calls by default; ``EDGERT_SOAK=all`` runs 20,000.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import edgert

from conftest import random_input
from ophelpers import skip_unless_opted_in

SOAK_RUNS = 2000
SOAK_RUNS_LONG = 20000
RSS_GROWTH_LIMIT = 8 << 20          # bytes


def _rss() -> int:
    """This process's resident set size in bytes (Linux /proc)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def _soak(artifact: Path, runs: int) -> tuple[int, int]:
    sess = edgert.Session(artifact)
    x = random_input(["batch", 20], 4, seed=11)
    [first] = sess.run(None, {"x": x})
    for _ in range(200):                         # warm up: allocator pools, caches
        sess.run(None, {"x": x})
    before = _rss()
    for i in range(runs):
        [y] = sess.run(None, {"x": x})
        if i % 500 == 0:
            np.testing.assert_array_equal(y, first)
    return before, _rss()


def test_soak_rss_growth_is_bounded(mlp_artifact):
    before, after = _soak(mlp_artifact, SOAK_RUNS)
    assert after - before < RSS_GROWTH_LIMIT, f"RSS grew {(after - before) / 2**20:.1f} MiB"


def test_long_soak(mlp_artifact):
    skip_unless_opted_in("EDGERT_SOAK", f"the {SOAK_RUNS_LONG}-run soak")
    before, after = _soak(mlp_artifact, SOAK_RUNS_LONG)
    assert after - before < RSS_GROWTH_LIMIT, f"RSS grew {(after - before) / 2**20:.1f} MiB"


def _inputs(n: int) -> list[np.ndarray]:
    return [random_input(["batch", 20], 1 + i % 5, seed=100 + i) for i in range(n)]


def _in_threads(work, count: int) -> list:
    results: list = [None] * count
    errors: list = []

    def body(k: int) -> None:
        try:
            results[k] = work(k)
        except BaseException as e:   # noqa: BLE001 (reported by the main thread)
            errors.append(e)

    threads = [threading.Thread(target=body, args=(k,)) for k in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def test_threads_sharing_one_session_match_sequential(mlp_artifact):
    sess = edgert.Session(mlp_artifact)
    xs = _inputs(40)
    want = [sess.run(None, {"x": x})[0] for x in xs]
    runs = 5                                    # 8 threads x 5 passes x 40 inputs

    def work(k: int) -> list:
        return [sess.run(None, {"x": xs[(i + k) % len(xs)]})[0]
                for _ in range(runs) for i in range(len(xs))]

    for k, got in enumerate(_in_threads(work, 8)):
        for j, y in enumerate(got):
            np.testing.assert_array_equal(y, want[(j % len(xs) + k) % len(xs)])


def test_sessions_in_parallel_match_sequential(mlp_artifact):
    xs = _inputs(20)
    seq = edgert.Session(mlp_artifact)
    want = [seq.run(None, {"x": x})[0] for x in xs]
    sessions = [edgert.Session(mlp_artifact, threads=1) for _ in range(4)]

    def work(k: int) -> list:
        return [sessions[k].run(None, {"x": x})[0] for _ in range(10) for x in xs]

    for got in _in_threads(work, 4):
        for j, y in enumerate(got):
            np.testing.assert_array_equal(y, want[j % len(xs)])


def _interrupted_compile(model: Path, folder: Path, sig: int) -> subprocess.Popen:
    """``edgert compile`` started in a process of its own with TMPDIR in ``folder/tmp``."""
    (folder / "tmp").mkdir(parents=True)
    env = {**os.environ, "TMPDIR": str(folder / "tmp")}
    return subprocess.Popen([sys.executable, "-m", "edgert", "compile", str(model), "-o",
                             str(folder / "out" / "m.edgert")], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _deep_mlp(path: Path, layers: int = 8) -> Path:
    """MatMul + Relu x ``layers`` of different widths: a model whose build takes a while
    (a kernel per layer) so that a signal sent as it starts lands inside it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    widths = [8 + 8 * i for i in range(layers + 1)]
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        inits.append(numpy_helper.from_array(
            rng.standard_normal((widths[i], widths[i + 1])).astype(np.float32), f"w{i}"))
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Relu", [f"m{i}"], [f"r{i}"])]
        prev = f"r{i}"
    graph = helper.make_graph(
        nodes, "deep", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", widths[0]])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["b", widths[-1]])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_compile_interrupted_during_the_build(tmp_path):
    """SIGINT and SIGTERM (two compiles side by side), sent once the lower stage has ended,
    i.e. during TVM's build: exit 130 / 143, "interrupted", no artifact, no temporary file or
    folder, no build log."""
    model = _deep_mlp(tmp_path / "deep.onnx")
    procs = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        folder = tmp_path / sig.name
        (folder / "out").mkdir(parents=True)
        procs[sig] = (folder, _interrupted_compile(model, folder, sig))
    for sig, (folder, proc) in procs.items():
        for line in proc.stdout:                       # stage lines, as each stage ends
            if line.split()[:1] == ["lower"]:
                break
        time.sleep(0.05)
        assert proc.poll() is None, "the compile ended before the signal"
        proc.send_signal(sig)
    for sig, (folder, proc) in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 128 + sig, (sig.name, proc.returncode, err)
        assert "interrupted" in err and "Traceback" not in err, err
        assert list((folder / "out").iterdir()) == []
        assert list((folder / "tmp").iterdir()) == []
