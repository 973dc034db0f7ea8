"""The command line: every command works, and user mistakes give one line and a distinct exit code."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from edgert.errors import ArtifactError, InputError, ModelError, TargetError, UnsupportedOpError
from edgert.targets import resolve_host

from conftest import random_input, run_cli


def test_help_for_every_command():
    out = run_cli("--help")
    assert out.returncode == 0
    for cmd in ("export", "compile", "run", "inspect", "targets", "demo"):
        assert cmd in out.stdout
        sub = run_cli(cmd, "--help")
        assert sub.returncode == 0 and "Usage" in sub.stdout, cmd


def test_targets_json():
    out = run_cli("targets", "--json")
    assert out.returncode == 0
    data = json.loads(out.stdout)
    names = {t["name"] for t in data["targets"]}
    assert {"x86-avx2", "rpi5", "cuda-sm90"} <= names
    assert data["host"] in names
    assert any(t["runs_here"] for t in data["targets"])


def test_compile_run_inspect(model_files, tmp_path):
    art = tmp_path / "mlp.edgert"
    out = run_cli("compile", str(model_files["mlp"]), "--target", "host", "-o", str(art))
    assert out.returncode == 0, out.stderr
    assert art.is_file() and f"wrote {art}" in out.stdout.replace("\n", "")

    x = random_input(["batch", 20], 3)
    np.save(tmp_path / "x.npy", x)
    out = run_cli("run", str(art), "--input", f"x={tmp_path / 'x.npy'}", "-o", str(tmp_path / "y.npz"))
    assert out.returncode == 0, out.stderr
    assert "y" in out.stdout and "[3, 5]" in out.stdout and "float32" in out.stdout
    y = np.load(tmp_path / "y.npz")["y"]

    np.savez(tmp_path / "all.npz", x=x)
    out = run_cli("run", str(art), "--input", str(tmp_path / "all.npz"), "-o", str(tmp_path / "y2.npz"))
    assert out.returncode == 0, out.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "y2.npz")["y"], y)

    out = run_cli("inspect", str(art), "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["kind"] == "edgert" and info["target"] == resolve_host().name
    assert info["ops"]["Gemm"]["count"] == 3 and "float32" in info["ops"]["Gemm"]["dtypes"]
    assert info["float_ops"] == info["nodes"] > 0  # an fp32 graph: every node is a float op
    assert info["parameters"] == 20 * 64 + 64 + 64 * 64 + 64 + 64 * 5 + 5

    out = run_cli("inspect", str(model_files["mlp"]))
    assert out.returncode == 0 and "float ops inside the graph" in out.stdout


def _damaged(art, tmp_path):
    bad = tmp_path / "damaged.edgert"
    with zipfile.ZipFile(art) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            zout.writestr(item, data + b"!" if item.filename == "model.onnx" else data)
    return bad


@pytest.mark.parametrize("case, error", [
    ("missing_model", ModelError),
    ("unsupported", UnsupportedOpError),
    ("bad_input", InputError),
    ("damaged", ArtifactError),
    ("unknown_target", TargetError),
])
def test_user_errors_are_one_line_with_distinct_codes(case, error, model_files, mlp_artifact, tmp_path):
    from test_check import _model_with_unknown_ops

    if case == "missing_model":
        args = ["compile", str(tmp_path / "nope.onnx")]
    elif case == "unsupported":
        args = ["compile", str(_model_with_unknown_ops(tmp_path / "u.onnx"))]
    elif case == "bad_input":
        np.save(tmp_path / "x.npy", np.zeros((2, 7), np.float32))
        args = ["run", str(mlp_artifact), "--input", f"x={tmp_path / 'x.npy'}"]
    elif case == "damaged":
        args = ["inspect", str(_damaged(mlp_artifact, tmp_path))]
    else:
        args = ["compile", str(model_files["mlp"]), "--target", "pi9", "-o", str(tmp_path / "m.edgert")]
    out = run_cli(*args)
    assert out.returncode == error.exit_code
    lines = [ln for ln in out.stderr.splitlines() if ln.strip() and "Warning" not in ln]
    assert len(lines) == 1 and lines[0].startswith("error:"), out.stderr
    assert "Traceback" not in out.stderr


def test_exit_codes_are_distinct():
    from edgert import errors

    kinds = [errors.ModelError, errors.UnsupportedOpError, errors.InputError, errors.ArtifactError,
             errors.TargetError, errors.CompileError]
    codes = [k.exit_code for k in kinds]
    assert len(set(codes)) == len(codes) and 2 not in codes  # 2 is the usage-error code


def test_npy_input_needs_a_name(mlp_artifact, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 20), np.float32))
    out = run_cli("run", str(mlp_artifact), "--input", str(tmp_path / "x.npy"))
    assert out.returncode == InputError.exit_code and "needs a name" in out.stderr


def test_demo_runs_and_reports():
    out = run_cli("demo", "--repeats", "5", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["test_images"] == 360
    # regression pin: 353 of the 360 held-out digits (98.06%), as onnxruntime's fp32 run
    assert result["accuracy"] == {"edgert": 353 / 360, "onnxruntime": 353 / 360}
    assert result["agreement"] == 1.0
    assert result["max_abs_logit_diff"] < 1e-4      # fp32 rounding (measured 6.9e-6)
    for runtime in ("edgert", "onnxruntime"):
        lat = result["latency_batch1"][runtime]
        assert lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]
        # milliseconds, not seconds or microseconds: one tiny-ViT image takes 0.13 / 0.24 ms
        # (edgert / onnxruntime) on a 2-core Zen 3; a unit slip is 1000x off either way
        assert 0.01 < lat["p50_ms"] < 50, lat


def test_demo_table():
    out = run_cli("demo", "--repeats", "3")
    assert out.returncode == 0, out.stderr
    assert "accuracy" in out.stdout and "latency" in out.stdout and "onnxruntime" in out.stdout
