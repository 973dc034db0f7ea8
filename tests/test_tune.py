"""``edgert tune`` / ``compile --tuning-db``: tuning database round trip, resume, budget."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from conftest import free_port, rel_err, run_cli

KERNEL = "fused_max_pool2d_relu"
X_SHAPE = (1, 8, 16, 16)


def _pool_model(path: Path) -> Path:
    """y = relu(maxpool3x3(x)), static shapes: one fused fp32 kernel left on TVM's generic
    compute (matmuls and convolutions, grouped ones too, run edgert's own kernels, which
    MetaSchedule does not tune)."""
    nodes = [helper.make_node("MaxPool", ["x"], ["h"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["y"])]
    graph = helper.make_graph(
        nodes, "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(X_SHAPE))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(X_SHAPE))])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """The model tuned for 8 trials into a fresh database: (model, db, report, progress)."""
    from edgert.compiler.tune import tune_model

    tmp = tmp_path_factory.mktemp("tune")
    model = _pool_model(tmp / "pool.onnx")
    progress = []
    report = tune_model(model, trials=8, db=tmp / "db", search="random", trials_per_batch=8,
                        seed=0, on_progress=lambda *a: progress.append(a))
    return model, tmp / "db", report, progress


def _manifest(path: Path) -> dict:
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read("manifest.json"))


def test_tune_writes_records(tuned):
    _model, db, report, progress = tuned
    (k,) = [k for k in report.kernels if k.name == KERNEL]
    assert k.status == "tuned" and k.trials == 8 and k.new_trials == 8
    assert k.default_ms > 0 and k.tuned_ms > 0
    assert k.signature == "float32 1x8x16x16 -> 1x8x16x16"
    folder = Path(report.db_dir) / k.key
    assert Path(report.db_dir).parent == db
    records = (folder / "database_tuning_record.json").read_text().splitlines()
    assert len(records) == 8
    meta = json.loads((folder / "edgert-kernel.json").read_text())
    assert meta["trials"] == 8 and meta["complete_for"] == 8 and meta["name"] == KERNEL
    assert not [p for p in Path(report.db_dir).iterdir() if p.name.startswith(".")]  # no temp left
    assert progress[-1][:3] == (KERNEL, 8, 8)


def _db_with_times(tuned, folder: Path, default_ms: float, tuned_ms: float) -> Path:
    """A copy of the tuned database in ``folder`` whose kernel records say ``default_ms`` and
    ``tuned_ms``: compile applies a record only when it measured faster than the default
    schedule, so this fixes the outcome that 8 random trials on a busy machine would leave to
    chance."""
    from edgert.compiler.tune import KERNEL_META

    _model, db, report, _ = tuned
    shutil.copytree(db, folder)
    (k,) = [k for k in report.kernels if k.name == KERNEL]
    meta_file = folder / Path(report.db_dir).name / k.key / KERNEL_META
    meta = json.loads(meta_file.read_text())
    meta.update(default_ms=default_ms, tuned_ms=tuned_ms)
    meta_file.write_text(json.dumps(meta))
    return folder


def test_compile_keeps_the_default_where_the_record_was_slower(tuned, tmp_path):
    from edgert.compiler import compile_model

    model = tuned[0]
    for tuned_ms in (2.0, 1.0):                          # slower, as fast: not applied
        db = _db_with_times(tuned, tmp_path / f"db{tuned_ms}", default_ms=1.0, tuned_ms=tuned_ms)
        art = compile_model(model, tmp_path / f"slow{tuned_ms}.edgert", tuning_db=db)
        assert _manifest(art)["tuning"]["tuned_kernels"] == []


def test_compile_uses_records(tuned, tmp_path):
    """A record faster than the default schedule replaces it; outputs are unchanged."""
    import tvm
    import tvm_ffi

    from edgert.compiler import compile_model
    from edgert.compiler.lower import to_relax
    from edgert.compiler.schedule_cpu import cpu_schedule_pass
    from edgert.compiler.tune import apply_tuning_db, prepare_kernels, target_db_dir
    from edgert.session import Session
    from edgert.targets import resolve_host

    model = tuned[0]
    db = _db_with_times(tuned, tmp_path / "db", default_ms=2.0, tuned_ms=1.0)
    plain = compile_model(model, tmp_path / "plain.edgert")
    fast = compile_model(model, tmp_path / "tuned.edgert", tuning_db=db)
    assert "tuning" not in _manifest(plain)
    assert _manifest(fast)["tuning"]["tuned_kernels"] == [KERNEL]
    assert _manifest(fast)["compile_options"]["tuning_db"] == str(db)

    # The kernel's schedule differs from the default one.
    target = resolve_host()
    tvm_target = tvm.target.Target(target.tvm_target_dict())
    mod = prepare_kernels(to_relax(onnx.load(model)), target, tvm_target)
    with tvm_target:
        default = cpu_schedule_pass(tvm_target)(mod)[KERNEL]
    applied: list[str] = []
    tuned_func = apply_tuning_db(mod, target_db_dir(db, target), tvm_target, applied)[KERNEL]
    assert applied == [KERNEL] and tuned_func.attrs["tirx.is_scheduled"]
    assert not tvm_ffi.structural_equal(default, tuned_func)
    assert default.script() != tuned_func.script()

    x = np.random.default_rng(1).standard_normal(X_SHAPE).astype(np.float32)
    ref = Session(plain).run(None, {"x": x})[0]
    out = Session(fast).run(None, {"x": x})[0]
    assert rel_err(out, ref) < 1e-5


def test_compile_uses_shipped_records_by_default(tuned, tmp_path, monkeypatch):
    """Records in the package's database (a copy of a DB/<target> folder) apply without
    --tuning-db; "none" turns them off; a target the package has no records for gets none."""
    from edgert.compiler import compile_model, tune

    model, _, report, _ = tuned
    shipped = _db_with_times(tuned, tmp_path / "package-data", default_ms=2.0, tuned_ms=1.0)
    monkeypatch.setattr(tune, "shipped_db_root", lambda: shipped)
    default = _manifest(compile_model(model, tmp_path / "default.edgert"))
    assert default["tuning"] == {"db": "shipped", "tuned_kernels": [KERNEL]}
    assert "tuning" not in _manifest(compile_model(model, tmp_path / "none.edgert",
                                                   tuning_db="none"))
    monkeypatch.setattr(tune, "shipped_db_root", lambda: tmp_path / "no-records")
    assert "tuning" not in _manifest(compile_model(model, tmp_path / "plain.edgert"))


def test_rerun_resumes(tuned):
    """A rerun with the same trials measures nothing; more trials continue the kernel."""
    from edgert.compiler.tune import tune_model

    model, db, first, _ = tuned
    again = tune_model(model, trials=8, db=db, search="random", trials_per_batch=8)
    k = again.kernels[0]
    assert (k.status, k.new_trials, k.trials) == ("cached", 0, 8)
    assert k.tuned_ms == first.kernels[0].tuned_ms
    more = tune_model(model, trials=12, db=db, search="random", trials_per_batch=4)
    k = more.kernels[0]
    assert (k.status, k.new_trials, k.trials) == ("tuned", 4, 12)
    assert k.tuned_ms <= first.kernels[0].tuned_ms


def test_cli_budget_end(tmp_path):
    model = _pool_model(tmp_path / "pool.onnx")
    r = run_cli("tune", str(model), "--trials", "8", "--budget-minutes", "0",
                "--tuning-db", str(tmp_path / "db"))
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert "time budget of 0 min used up" in text and "run the same command again" in text
    assert "│ budget" in text     # the kernel's status in the table


def test_errors(tmp_path):
    from edgert.compiler import compile_model
    from edgert.compiler.tune import tune_model
    from edgert.errors import InputError, TargetError

    model = _pool_model(tmp_path / "pool.onnx")
    with pytest.raises(TargetError, match="CPU targets only"):
        tune_model(model, target="cuda-sm90", db=tmp_path / "db")
    with pytest.raises(InputError, match="no such directory"):
        compile_model(model, tmp_path / "m.edgert", tuning_db=tmp_path / "missing")


def test_tune_through_a_boards_rpc_server(rpc_server, tmp_path):
    """Candidates built here, timed by the RPC server (here on 127.0.0.1, as a board's)."""
    from edgert.compiler.tune import KERNEL_META, tune_model

    model = _pool_model(tmp_path / "pool.onnx")
    report = tune_model(model, trials=4, db=tmp_path / "db", search="random",
                        trials_per_batch=4, seed=0, rpc=rpc_server)
    assert report.measured_on == f"rpc {rpc_server}"
    (k,) = [k for k in report.kernels if k.name == KERNEL]
    assert k.status == "tuned" and k.trials == 4 and k.default_ms > 0 and k.tuned_ms > 0
    meta = json.loads((Path(report.db_dir) / k.key / KERNEL_META).read_text())
    assert meta["measured_on"] == f"rpc {rpc_server}" and meta["trials"] == 4


def test_tune_rpc_errors(tmp_path):
    from edgert.compiler.tune import tune_model
    from edgert.errors import InputError, TargetError

    model = _pool_model(tmp_path / "pool.onnx")
    with pytest.raises(TargetError, match="cannot reach the RPC server"):
        tune_model(model, trials=1, db=tmp_path / "db", rpc=f"127.0.0.1:{free_port()}")
    with pytest.raises(InputError, match="HOST:PORT"):
        tune_model(model, trials=1, db=tmp_path / "db", rpc="board")
    r = run_cli("tune", str(model), "--target", "rpi5", "--tuning-db", str(tmp_path / "db"))
    assert r.returncode != 0 and "--rpc HOST:PORT" in r.stderr     # rpi5 cannot run here
