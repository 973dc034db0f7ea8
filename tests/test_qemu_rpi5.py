"""rpi5 (aarch64) artifacts run under qemu-aarch64 agree with the same model compiled for this
machine: integer-only graphs bit for bit, fp32 graphs within rounding.

The rpi5 library runs in the cached aarch64 Python + TVM runtime environment of
:mod:`edgert.targets.qemu` (set up on first use: about 15 s and 150 MB of downloads; a few
milliseconds when cached), emulating a Cortex-A76. The tests skip with the reason when qemu, the
cross compiler or that environment is not available; with ``EDGERT_REQUIRE_QEMU=1`` (CI) they
fail instead.

Why fp32 is not bit-exact: the two libraries are different machine code for the same graph,
and LLVM contracts multiply-adds differently. In a matmul whose reduction it unrolls (K=64,
N=5: the MLP's last layer) the aarch64 code multiplies 8 products with ``fmul v.4s`` and adds
them with scalar ``fadd`` (each product rounded), while the x86 code chains ``vfmadd132ss``
(products not rounded): a few ulp apart, more relative to outputs that cancel to near zero.
(Measured once: MLP 4e-8 relative, 13 of 25 values differing, when its matmuls were TVM's
generic compute.) Measured now: the MLP and the BatchNorm CNN of
``test_fp32_rpi5_under_qemu_close_to_host`` bit-identical, and so are tanh, exp, MatMul+Add and
matmuls that vectorize over N. Integer arithmetic has no
rounding, so the integer-only graphs (float32 I/O quantized/dequantized by single IEEE
operations, all the rest in integers) must be bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

import edgert
from edgert.compiler import compile_model
from edgert.demo import demo_calib_file, demo_files
from edgert.errors import TargetError
from edgert.ops import DOMAIN, intmatmul, requant, shiftmax
from edgert.targets import host_arch
from edgert.targets.qemu import run_under_qemu

from conftest import random_input, raw_bits, rel_err, rpi5_and_host
from ophelpers import assert_bit_exact, integer_model



@pytest.mark.parametrize("name,batch", [("mlp", 5), ("bn_cnn", 3)])
def test_fp32_rpi5_under_qemu_close_to_host(qemu_env, model_files, tmp_path, name, batch):
    rpi5, host = rpi5_and_host(model_files[name], tmp_path, name)
    spec = edgert.Session(host).get_inputs()[0]
    feed = {spec.name: random_input(spec.shape, batch)}
    [got] = run_under_qemu(rpi5, feed)
    [want] = edgert.Session(host).run(None, feed)
    assert got.dtype == want.dtype and got.shape == want.shape
    # Regression pin: measured bit-identical (0 ulp) for both models. Nothing guarantees it
    # (see above: a different FMA contraction would differ by a few ulp); if a change makes them
    # differ, measure the ulp distance and pin that, with the reason.
    assert_bit_exact(f"{name} rpi5 vs host", raw_bits(got), raw_bits(want))


@pytest.fixture(scope="module")
def vit_int(qemu_env, tmp_path_factory):
    return rpi5_and_host(demo_files()[0], tmp_path_factory.mktemp("vit"), "vit_int", int_only=True,
                 calib=demo_calib_file())


def test_int_only_vit_rpi5_under_qemu_bit_identical(vit_int):
    rpi5, host = vit_int
    images = np.load(demo_files()[1])["images"]
    edge = np.random.default_rng(3).uniform(-3, 4, (3, 1, 8, 8)).astype(np.float32)
    edge[0], edge[1], edge[2] = 0.0, 1e6, -0.5                 # zero, saturating, constant
    feed = {"image": np.concatenate([images, edge])}
    [got] = run_under_qemu(rpi5, feed)
    [want] = edgert.Session(host).run(None, feed)
    assert_bit_exact("rpi5 (qemu) vs host logits", raw_bits(got), raw_bits(want))


def test_lut_int_only_vit_rpi5_under_qemu_bit_identical(qemu_env, tmp_path):
    """Low-bit weights (LutMatMul, integer variant, 3 bits) on rpi5 under qemu = host."""
    rpi5, host = rpi5_and_host(demo_files()[0], tmp_path, "vit_lut3", int_only=True,
                       calib=demo_calib_file(), weight_bits=3)
    assert edgert.Session(host).manifest["lowbit"]["nodes"]
    feed = {"image": np.load(demo_files()[1])["images"][:64]}
    [got] = run_under_qemu(rpi5, feed)
    [want] = edgert.Session(host).run(None, feed)
    assert_bit_exact("rpi5 (qemu) vs host logits, 3-bit LUT weights", raw_bits(got), raw_bits(want))


def _integer_graph() -> tuple[onnx.ModelProto, dict, Callable]:
    """int8/int16 inputs -> MatMulInteger (int8 x int8) and edgert IntMatMul (int16 x int8), K=64
    -> per-channel Requant to int8 -> Shiftmax; every output an integer tensor."""
    rng = np.random.default_rng(5)
    w8 = rng.integers(-128, 128, (64, 48), dtype=np.int8)
    w16 = rng.integers(-127, 128, (64, 48), dtype=np.int8)
    m, e = requant.params(rng.uniform(2e-5, 8e-5, 48))
    smax = shiftmax.params(0.05, 48, k=8)
    nodes = [
        helper.make_node("MatMulInteger", ["a8", "w8"], ["mmi"], name="mmi"),
        helper.make_node("IntMatMul", ["a16", "w16"], ["imm"], name="imm", domain=DOMAIN),
        helper.make_node("Requant", ["mmi", "m", "e"], ["rq"], name="rq", domain=DOMAIN,
                         to=TP.INT8, lo=-128, hi=127, axis=-1),
        helper.make_node("Shiftmax", ["rq"], ["sm"], name="sm", domain=DOMAIN, **smax),
    ]
    shape = ["batch", 16]
    ins = [helper.make_tensor_value_info("a8", TP.INT8, [*shape, 64]),
           helper.make_tensor_value_info("a16", TP.INT16, [*shape, 64])]
    outs = [helper.make_tensor_value_info(n, t, [*shape, 48])
            for n, t in [("mmi", TP.INT32), ("imm", TP.INT32), ("rq", TP.INT8), ("sm", TP.INT8)]]
    inits = [numpy_helper.from_array(v, k) for k, v in
             {"w8": w8, "w16": w16, "m": m, "e": e}.items()]
    feed = {"a8": rng.integers(-128, 128, (3, 16, 64), dtype=np.int8),
            "a16": rng.integers(-32768, 32768, (3, 16, 64), dtype=np.int16)}

    def oracle(a8, a16):
        mmi = (a8.astype(np.int64) @ w8.astype(np.int64)).astype(np.int32)
        rq = requant.reference(mmi, m, e, lo=-128, hi=127, to="int8", axis=-1)
        return [mmi, intmatmul.reference(a16, w16), rq, shiftmax.reference(rq, **smax)]

    return integer_model(nodes, ins, outs, inits), feed, oracle


def test_integer_graph_rpi5_under_qemu_bit_identical(qemu_env, tmp_path):
    model, feed, oracle = _integer_graph()
    onnx.save(model, tmp_path / "int_graph.onnx")
    rpi5, host = rpi5_and_host(tmp_path / "int_graph.onnx", tmp_path, "int_graph")
    got = run_under_qemu(rpi5, feed)
    want = edgert.Session(host).run(None, feed)
    ref = oracle(**feed)
    for name, g, w, r in zip(["mmi", "imm", "rq", "sm"], got, want, ref):
        assert_bit_exact(f"{name}: rpi5 (qemu) vs host", g, w)
        assert_bit_exact(f"{name}: rpi5 (qemu) vs numpy oracle", g, r)


# ---------------------------------------------------------------- without qemu


def test_missing_qemu_names_the_package(monkeypatch, tmp_path):
    from edgert.targets import qemu

    monkeypatch.setenv("EDGERT_CACHE", str(tmp_path))
    monkeypatch.setattr(qemu.shutil, "which", lambda _name: None)
    with pytest.raises(TargetError, match="apt-get install qemu-user"):
        qemu.ensure_aarch64_env()
    assert not (tmp_path / "aarch64").exists()


def test_run_under_qemu_refuses_a_non_aarch64_artifact(mlp_artifact):
    if host_arch() == "aarch64":
        pytest.skip("the host artifact is aarch64 here")
    with pytest.raises(TargetError, match="runs aarch64 CPU artifacts"):
        run_under_qemu(mlp_artifact, {"x": random_input(["batch", 20], 2)})


def test_tune_rpi5_through_an_emulated_boards_rpc_server(qemu_env, tmp_path):
    """``edgert tune --target rpi5 --rpc``: candidates cross-compiled here, timed by TVM's RPC
    server in the runtime-only aarch64 Python under qemu (as on a board); the records then
    serve ``compile --tuning-db`` for rpi5: applied when they say the tuned schedule beat the
    default, not otherwise. Which one won under qemu is chance, so both outcomes are set in the
    record (``default_ms`` / ``tuned_ms`` of its ``edgert-kernel.json``) and checked."""
    import json

    from edgert.artifact import read_artifact
    from edgert.compiler.tune import KERNEL_META, tune_model
    from edgert.targets.qemu import rpc_server_command

    from conftest import free_port, rpc_server_process
    from test_tune import KERNEL, X_SHAPE, _pool_model

    model = _pool_model(tmp_path / "pool.onnx")
    port = free_port()
    cmd, env = rpc_server_command(port)
    with rpc_server_process(cmd, port, env=env, timeout=120) as address:
        report = tune_model(model, target="rpi5", trials=2, db=tmp_path / "db", search="random",
                            trials_per_batch=2, seed=0, rpc=address, threads=1)
    assert report.target == "rpi5" and report.measured_on == f"rpc {address}"
    (k,) = [k for k in report.kernels if k.name == KERNEL]
    assert k.status == "tuned" and k.trials == 2 and k.default_ms > 0 and k.tuned_ms > 0
    meta_file = tmp_path / "db" / "rpi5" / k.key / KERNEL_META
    assert Path(report.db_dir) == meta_file.parent.parent
    meta = json.loads(meta_file.read_text())
    assert meta["measured_on"] == f"rpc {address}"
    x = np.random.default_rng(0).standard_normal(X_SHAPE).astype(np.float32)
    host = edgert.Session(compile_model(model, tmp_path / "conv.edgert", threads=1)).run(
        None, {"x": x})[0]
    for tuned_ms, applied in ((1.0, [KERNEL]), (3.0, [])):
        meta_file.write_text(json.dumps({**meta, "default_ms": 2.0, "tuned_ms": tuned_ms}))
        art = compile_model(model, tmp_path / f"conv_rpi5_{tuned_ms}.edgert", target="rpi5",
                            threads=1, tuning_db=tmp_path / "db")
        assert read_artifact(art).manifest["tuning"]["tuned_kernels"] == applied
        (got,) = run_under_qemu(art, {"x": x})
        assert rel_err(got, host) < 1e-5
