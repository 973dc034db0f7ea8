"""Remote boards: ``Session(path, rpc="HOST:PORT")`` and ``edgert run --rpc`` run an artifact on
TVM's stock RPC server (here one started on 127.0.0.1 by the test, as a board would run it)."""

from __future__ import annotations

import numpy as np
import pytest

import edgert
from edgert.errors import InputError, TargetError

from conftest import free_port, random_input, run_cli


def test_remote_run_matches_local(mlp_artifact, rpc_server):
    local = edgert.Session(mlp_artifact)
    remote = edgert.Session(mlp_artifact, rpc=rpc_server, threads=1)
    assert remote.backend == "tvm-rpc"
    for batch in (1, 5):
        x = random_input(["batch", 20], batch, seed=batch)
        np.testing.assert_array_equal(remote.run(None, {"x": x})[0], local.run(None, {"x": x})[0])
    with pytest.raises(InputError, match="expected dtype float32"):   # checked before sending
        remote.run(None, {"x": np.zeros((1, 20), np.float64)})


def test_cli_run_rpc(mlp_artifact, rpc_server, tmp_path):
    x = random_input(["batch", 20], 3)
    np.save(tmp_path / "x.npy", x)
    out = run_cli("run", str(mlp_artifact), "-i", f"x={tmp_path / 'x.npy'}", "--rpc", rpc_server,
                  "-o", str(tmp_path / "y.npz"))
    assert out.returncode == 0, out.stderr
    [want] = edgert.Session(mlp_artifact).run(None, {"x": x})
    np.testing.assert_array_equal(np.load(tmp_path / "y.npz")["y"], want)


def test_unreachable_server_and_bad_address(mlp_artifact):
    port = free_port()                                # nothing listens there
    with pytest.raises(TargetError, match=f"cannot reach the RPC server at 127.0.0.1:{port}"):
        edgert.Session(mlp_artifact, rpc=f"127.0.0.1:{port}")
    with pytest.raises(InputError, match="HOST:PORT"):
        edgert.Session(mlp_artifact, rpc="localhost")
    with pytest.raises(InputError, match="use the tvm backend"):
        edgert.Session(mlp_artifact, rpc=f"127.0.0.1:{port}", backend="numba")
    out = run_cli("run", str(mlp_artifact), "-i", "x=missing.npy", "--rpc", "nohost")
    assert out.returncode != 0 and "Traceback" not in out.stderr


def test_library_for_another_board_is_a_target_error(aarch64_cc, model_files, rpc_server,
                                                      tmp_path):
    """An rpi5 (aarch64) library sent to this x86 server cannot load there: a clear error."""
    from edgert.compiler import compile_model

    art = compile_model(model_files["mlp"], tmp_path / "mlp_rpi5.edgert", target="rpi5")
    with pytest.raises(TargetError, match=rf"{rpc_server} cannot load .*rpi5"):
        edgert.Session(art, rpc=rpc_server)
