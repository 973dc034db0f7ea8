"""Shared fixtures: small fp32 models exported from PyTorch (or built with onnx.helper)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="session")
def _kernel_choice_cache(tmp_path_factory):
    """``--lut auto`` timings of the test session go to a file of its own, not the user's
    cache (subprocesses inherit the variable)."""
    path = tmp_path_factory.mktemp("kernel_choice") / "kernel_choice.json"
    old = os.environ.get("EDGERT_KERNEL_CHOICE")
    os.environ["EDGERT_KERNEL_CHOICE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("EDGERT_KERNEL_CHOICE", None)
    else:
        os.environ["EDGERT_KERNEL_CHOICE"] = old


@pytest.fixture(autouse=True, scope="session")
def _no_compile_cache():
    """Every compile of the session compiles (subprocesses inherit the variable): none reads
    or fills the user's compile cache, and none gets another test's build, which the source
    digest in the cache key would not tell from its own where a test patches the compiler.
    ``tests/test_compile_cache.py`` turns the cache on, in folders of its own."""
    old = os.environ.get("EDGERT_NO_COMPILE_CACHE")
    os.environ["EDGERT_NO_COMPILE_CACHE"] = "1"
    yield
    if old is None:
        os.environ.pop("EDGERT_NO_COMPILE_CACHE", None)
    else:
        os.environ["EDGERT_NO_COMPILE_CACHE"] = old


def run_cli(*args: str, cwd: str | os.PathLike | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m edgert ARGS`` in a fresh process."""
    return subprocess.run([sys.executable, "-m", "edgert", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    """max |ours - ref| / max |ref| (the fp32 agreement measure used throughout the tests)."""
    return float(np.abs(ours.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))


def _torch_models() -> dict:
    torch = pytest.importorskip("torch")
    from torch import nn

    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 5))
    cnn = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(16, 10),
    )
    # Give BatchNorm non-trivial statistics so folding errors would show.
    with torch.no_grad():
        for m in cnn:
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    encoder = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True), 2,
        enable_nested_tensor=False,
    )
    return {
        "mlp": (mlp, torch.randn(2, 20)),
        "cnn": (cnn, torch.randn(2, 3, 16, 16)),
        "encoder": (encoder, torch.randn(2, 32, 64)),
    }


def batchnorm_cnn_onnx(path: Path) -> Path:
    """Conv -> BatchNormalization -> Relu -> MaxPool -> GlobalAveragePool, as explicit ONNX ops
    (the torch exporter folds BatchNorm into Conv, so this keeps the op itself under test)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.uniform(-0.2, 0.2, 8).astype(np.float32), "beta"),
        numpy_helper.from_array(rng.uniform(-0.5, 0.5, 8).astype(np.float32), "mean"),
        numpy_helper.from_array(rng.uniform(0.5, 2.0, 8).astype(np.float32), "var"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p"], ["y"], name="gap"),
    ]
    graph = helper.make_graph(
        nodes, "bn_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8, 1, 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


@pytest.fixture(scope="session")
def model_files(tmp_path_factory) -> dict[str, Path]:
    """name -> ONNX file: mlp, cnn, encoder (torch exports), bn_cnn (onnx.helper), vit (packaged)."""
    from edgert.compiler import export
    from edgert.demo import demo_files

    out = tmp_path_factory.mktemp("models")
    files = {}
    for name, (module, example) in _torch_models().items():
        files[name] = export(module, (example,), out / f"{name}.onnx", input_names=["x"],
                             output_names=["y"])
    files["bn_cnn"] = batchnorm_cnn_onnx(out / "bn_cnn.onnx")
    files["vit"] = demo_files()[0]
    return files


@pytest.fixture(scope="session")
def mlp_artifact(model_files, tmp_path_factory) -> Path:
    """The MLP compiled for this machine (shared by the artifact/session/CLI tests)."""
    from edgert.compiler import compile_model

    return compile_model(model_files["mlp"], tmp_path_factory.mktemp("art") / "mlp.edgert")


def random_input(spec_shape: list, batch: int, seed: int = 0) -> np.ndarray:
    """A float32 input for a shape with a symbolic batch axis."""
    shape = [batch if not isinstance(d, int) else d for d in spec_shape]
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


QEMU_FIXTURES = ("qemu_env", "aarch64_cc")
"""Fixtures that need the aarch64 toolchain: a test using one is marked ``qemu``."""


def pytest_collection_modifyitems(config, items):
    """Mark tests that use :data:`QEMU_FIXTURES` ``qemu`` (so ``-m "not qemu"`` deselects them);
    skip tests marked ``gpu`` cleanly when no NVIDIA GPU is present."""
    from edgert.targets import cuda_device_present

    for item in items:
        if any(f in getattr(item, "fixturenames", ()) for f in QEMU_FIXTURES):
            item.add_marker(pytest.mark.qemu)
    if cuda_device_present():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (none found)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _aarch64_unavailable(reason: str) -> None:
    """Skip with ``reason``, or fail under ``EDGERT_REQUIRE_QEMU=1`` (CI sets it always: there
    a missing toolchain must fail the run, not hide the rpi5 tests)."""
    if os.environ.get("EDGERT_REQUIRE_QEMU") == "1":
        pytest.fail(f"{reason} (EDGERT_REQUIRE_QEMU=1 makes this a failure)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def aarch64_cc() -> str:
    """Path of the aarch64 cross compiler (rpi5 / jetson artifacts are linked with it), or a
    skip saying why not; with ``EDGERT_REQUIRE_QEMU=1`` a failure."""
    import shutil

    from edgert.targets import host_arch

    if host_arch() == "aarch64":
        pytest.skip("this machine is aarch64: no cross compiler involved")
    path = shutil.which("aarch64-linux-gnu-gcc")
    if path is None:
        _aarch64_unavailable("needs the aarch64 cross compiler "
                             "(apt-get install gcc-aarch64-linux-gnu)")
    return path


@pytest.fixture(scope="session")
def qemu_env():
    """The cached aarch64 environment of :mod:`edgert.targets.qemu` (set up here on first use)
    for running rpi5 artifacts under qemu-aarch64, or a skip saying why not; with
    ``EDGERT_REQUIRE_QEMU=1`` (CI sets it always) a failure."""
    import shutil

    from edgert.errors import TargetError
    from edgert.targets import host_arch

    if host_arch() == "aarch64":
        pytest.skip("this machine is aarch64: rpi5 artifacts run natively, no qemu needed")
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        _aarch64_unavailable("needs the aarch64 cross compiler "
                             "(apt-get install gcc-aarch64-linux-gnu)")
    from edgert.targets.qemu import ensure_aarch64_env

    try:
        return ensure_aarch64_env()
    except TargetError as e:
        _aarch64_unavailable(f"cannot run aarch64 code here: {e}")


def rpi5_and_host(model: str | os.PathLike, tmp: Path, name: str, **options) -> tuple[Path, Path]:
    """``model`` compiled for rpi5 and for this machine (``compile_model`` options alike; low-bit
    weights by table lookup on both: ``--lut auto`` would time, and choose for, the host only)."""
    from edgert.compiler import compile_model

    if "weight_bits" in options:
        options.setdefault("lut", "always")
    return tuple(compile_model(model, tmp / f"{name}_{t}.edgert", target=t, **options)
                 for t in ("rpi5", "host"))


def lowbit_mlp(path: str | os.PathLike, rows: int | None = None, k: int = 128, h: int = 96,
               n: int = 40) -> str | os.PathLike:
    """Save ``x [rows or (b, s), k] -> MatMul fc1 -> Relu -> MatMul fc2 -> y [.., n]`` (two
    weights for ``--weight-bits``) to ``path`` and return it."""
    rng = np.random.default_rng(3)
    w1 = (rng.standard_normal((k, h)) * 0.2).astype(np.float32)
    w2 = (rng.standard_normal((h, n)) * 0.2).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    lead = [rows] if rows else ["b", "s"]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [*lead, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [*lead, n])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def raw_bits(a: np.ndarray) -> np.ndarray:
    """The raw bits of ``a`` (floats compared as integers: -0.0 != 0.0, NaN payloads count)."""
    return a.view(f"u{a.dtype.itemsize}") if a.dtype.kind == "f" else a


# ---------------------------------------------------------------- a TVM RPC server (a "board")

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def rpc_server_process(command: list[str], port: int, env: dict | None = None,
                       timeout: float = 60) -> Iterator[str]:
    """Run ``command`` (a TVM RPC server listening on 127.0.0.1:``port``) until it accepts
    connections; yields ``HOST:PORT``; kills it and the workers it forks afterwards."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, start_new_session=True)   # its own group: it forks workers
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the TVM RPC server did not start: {command}")
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def rpc_server() -> Iterator[str]:
    """``python -m tvm.exec.rpc_server`` on 127.0.0.1, as a board would run it."""
    port = free_port()
    with rpc_server_process([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1",
                             "--port", str(port), "--port-end", str(port + 1), "--silent"],
                            port) as address:
        yield address
