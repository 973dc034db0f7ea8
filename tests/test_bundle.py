"""``edgert bundle``: a runtime-only folder runs on a "board" that has Python and numpy only.

The x86 board is a fresh venv in tmp_path (``--without-pip``, numpy put on its path by a .pth
file pointing at a folder that holds only numpy: no apache-tvm, no onnx, no edgert); the rpi5
board is the cached arm64 Python of :mod:`edgert.targets.qemu` under ``qemu-aarch64 -cpu
cortex-a76`` with only its numpy on the path. Integer graphs must give the full install's
outputs bit for bit. TVM's runtime files come from the apache-tvm wheels (``pip download`` on
first use, then cached under ``$EDGERT_CACHE/runtime`` like the qemu environment; offline, the
x86 bundle takes them from this machine's installed wheels); the rpi5 test skips when the
aarch64 wheels cannot be downloaded. The tests print the bundle sizes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

import edgert
from edgert.bundle import make_bundle
from edgert.bundle.contents import NUMBA_DEPS, source_files, top_level_imports
from edgert.errors import TargetError

from ophelpers import assert_bit_exact, skip_unless_opted_in

X86_GOAL_MB = 15.0
RPI5_GOAL_MB = 12.0


def int_matmul_onnx(path: Path) -> Path:
    """x float32 [b, 16] -> QuantizeLinear (scale 0.05) -> MatMulInteger (int8 weights) ->
    y int32 [b, 8]: integer arithmetic after one IEEE rounding."""
    w = np.random.default_rng(0).integers(-127, 128, (16, 8)).astype(np.int8)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="quant"),
             helper.make_node("MatMulInteger", ["q", "w"], ["y"], name="mm")]
    graph = helper.make_graph(
        nodes, "int_matmul", [helper.make_tensor_value_info("x", TP.FLOAT, ["b", 16])],
        [helper.make_tensor_value_info("y", TP.INT32, ["b", 8])],
        [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
         numpy_helper.from_array(np.array(0, np.int8), "z"), numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def feed_x(rows: int = 5) -> np.ndarray:
    x = np.random.default_rng(1).uniform(-8, 8, (rows, 16)).astype(np.float32)
    x[0] = 0.0
    x[1] = 1e6                                     # saturates to 127
    return x


@pytest.fixture(scope="module")
def int_models(tmp_path_factory) -> dict[str, Path]:
    from edgert.compiler import compile_model

    tmp = tmp_path_factory.mktemp("bundle_models")
    onnx_path = int_matmul_onnx(tmp / "int_matmul.onnx")
    return {"onnx": onnx_path, "host": compile_model(onnx_path, tmp / "int_matmul.edgert")}


def bundle_or_skip(artifacts: list[Path], out: Path, **kw) -> object:
    """make_bundle, printing the sizes; a skip when TVM's wheels cannot be downloaded."""
    try:
        report = make_bundle(artifacts, out, **kw)
    except TargetError as e:
        if "pip download" in str(e):
            pytest.skip(f"cannot fetch TVM's runtime wheels (offline?): {str(e)[:300]}")
        raise
    print(f"\nbundle for {report.target}:\n" + "\n".join(report.lines()))
    return report


def numpy_only_python(tmp: Path) -> Path:
    """A fresh venv whose only third-party package is numpy (a .pth to a folder holding links
    to this machine's numpy): the x86 board."""
    venv = tmp / "board-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    numpy_dir = Path(np.__file__).parent
    only = tmp / "numpy-only"
    only.mkdir()
    for item in numpy_dir.parent.iterdir():
        if item.name == "numpy" or item.name.startswith(("numpy-", "numpy.libs")):
            (only / item.name).symlink_to(item)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "numpy_only.pth").write_text(f"{only}\n")
    return venv / "bin" / "python"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "TVM_", "VIRTUAL_ENV"))}
    return {**env, **extra}


def board(python: Path, bundle: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), str(bundle / "edgert"), *args], capture_output=True,
                          text=True, cwd=cwd, env=clean_env(), timeout=300)


def test_x86_bundle_runs_with_numpy_only(int_models, tmp_path):
    """Run, inspect, profile and a refused compile in a venv with numpy alone; outputs equal
    the full install's bit for bit; the bundle holds no compiler and stays under the goal."""
    host = int_models["host"]
    report = bundle_or_skip([host], tmp_path / "deploy")
    deploy = report.path
    assert not list(deploy.rglob("libtvm_compiler.so")) and not list(deploy.rglob("*.h"))
    assert not (deploy / "tvm" / "relax").exists() and not (deploy / "edgert" / "compiler").exists()
    assert (deploy / "requirements.txt").read_text().splitlines()[-1] == f"numpy=={np.__version__}"
    assert report.runtime_bytes <= X86_GOAL_MB * 1e6, report.lines()

    python = numpy_only_python(tmp_path)
    x = feed_x()
    np.save(tmp_path / "x.npy", x)
    isolated = subprocess.run([str(python), "-c", "import numpy, importlib.util as u; print("
                               "[m for m in ('tvm', 'onnx', 'edgert', 'typer') if u.find_spec(m)])"],
                              capture_output=True, text=True, cwd=tmp_path, env=clean_env())
    assert isolated.stdout.strip() == "[]", isolated.stdout + isolated.stderr

    run = board(python, deploy, "run", "int_matmul", "-i", f"x={tmp_path / 'x.npy'}", "-o",
                str(tmp_path / "out.npz"), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    [want] = edgert.Session(host).run(None, {"x": x})
    with np.load(tmp_path / "out.npz") as got:
        assert got["y"].dtype == np.int32
        assert_bit_exact("bundle (numpy-only venv) vs full install", got["y"], want)

    # as a package on PYTHONPATH: Session without the CLI, TVM's compiler never loaded
    code = ("import sys, numpy as np, edgert; s = edgert.Session(sys.argv[1]); "
            "y = s.run(None, {'x': np.load(sys.argv[2])})[0]; np.save(sys.argv[3], y); "
            "maps = open('/proc/self/maps').read(); "
            "assert 'libtvm_runtime.so' in maps and 'libtvm_compiler' not in maps")
    lib = subprocess.run([str(python), "-c", code, str(deploy / "models" / host.name),
                          str(tmp_path / "x.npy"), str(tmp_path / "y.npy")], capture_output=True,
                         text=True, cwd=tmp_path, env=clean_env(PYTHONPATH=str(deploy)),
                         timeout=300)
    assert lib.returncode == 0, lib.stderr
    assert_bit_exact("Session from the bundle", np.load(tmp_path / "y.npy"), want)

    inspect = board(python, deploy, "inspect", "int_matmul", cwd=tmp_path)
    assert inspect.returncode == 0, inspect.stderr
    assert "target x86-avx2" in inspect.stdout or "target x86-avx512" in inspect.stdout
    assert "MatMulInteger" in inspect.stdout and "int32" in inspect.stdout

    profile = board(python, deploy, "profile", "int_matmul", "--runs", "5", cwd=tmp_path)
    assert profile.returncode == 0, profile.stderr
    assert "p50" in profile.stdout and "5 runs" in profile.stdout

    compile_ = board(python, deploy, "compile", "m.onnx", "-o", "m.edgert", cwd=tmp_path)
    assert compile_.returncode == 10 and compile_.stdout == ""
    assert len(compile_.stderr.strip().splitlines()) == 1, compile_.stderr
    assert "needs the full edgert install" in compile_.stderr

    numba = board(python, deploy, "run", "int_matmul", "-i", f"x={tmp_path / 'x.npy'}",
                  "--backend", "numba", cwd=tmp_path)        # not in a tvm bundle
    assert numba.returncode == 10 and len(numba.stderr.strip().splitlines()) == 1, numba.stderr
    assert "--backend numba" in numba.stderr


def test_rpi5_bundle_under_qemu(qemu_env, int_models, tmp_path):
    """The rpi5 bundle runs in the arm64 Python under qemu-aarch64 -cpu cortex-a76 with only
    numpy on its path: the same int32 outputs as the x86 full install."""
    import json

    from edgert.compiler import compile_model
    from edgert.targets.qemu import find_qemu, guest_command

    rpi5 = compile_model(int_models["onnx"], tmp_path / "int_matmul.edgert", target="rpi5")
    report = bundle_or_skip([rpi5], tmp_path / "deploy", target="rpi5")
    assert report.runtime_bytes <= RPI5_GOAL_MB * 1e6, report.lines()
    assert list((report.path / "tvm_ffi").glob("core.*aarch64*.so"))
    numpy_only = tmp_path / "numpy-only"
    numpy_only.mkdir()
    for name in ("numpy", "numpy.libs"):
        if (qemu_env / "site" / name).exists():
            (numpy_only / name).symlink_to(qemu_env / "site" / name)
    x = feed_x()
    np.save(tmp_path / "x.npy", x)
    info = json.loads((qemu_env / "env.json").read_text())
    if info["python_version"] == f"{sys.version_info.major}.{sys.version_info.minor}":
        # byte code as a board keeps it after its first run (compiled here: the emulated
        # compile of TVM's modules would double the test's time)
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(report.path)],
                       check=True, capture_output=True, timeout=300)
    cmd, env = guest_command(find_qemu(), qemu_env, info,
                             [str(report.path / "edgert"), "run", "int_matmul", "-i",
                              f"x={tmp_path / 'x.npy'}", "-o", str(tmp_path / "out.npz"),
                              "--threads", "1"], cpu="cortex-a76")
    env.pop("TVM_USE_RUNTIME_LIB")         # the bundle sets it itself
    env.update(PYTHONPATH=str(numpy_only),
               EDGERT_CPU_FEATURES="asimd,asimddp")   # qemu-user shows the host's cpuinfo
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    [want] = edgert.Session(int_models["host"]).run(None, {"x": x})
    with np.load(tmp_path / "out.npz") as got:
        assert_bit_exact("rpi5 bundle (qemu) vs x86 full install", got["y"], want)


def test_bundle_refuses_an_artifact_for_another_target(int_models, tmp_path):
    with pytest.raises(TargetError) as e:
        make_bundle([int_models["host"]], tmp_path / "deploy", target="rpi5")
    msg = str(e.value)
    host_target = edgert.Session(int_models["host"]).manifest["target"]["name"]
    assert "\n" not in msg and host_target in msg and "rpi5" in msg
    assert not (tmp_path / "deploy").exists() and not list(tmp_path.iterdir())


def test_bundled_modules_import_only_numpy_and_tvm():
    """Every module a bundle carries imports, at module level, only the standard library,
    numpy, TVM's runtime and edgert modules that are in the bundle too (no onnx, typer, rich,
    compiler); the numba bundle adds numba and onnx only; low-bit artifacts add the ops
    package's layout code, which imports nothing more at module level."""
    for numba, lowbit in ((False, False), (True, False), (False, True)):
        files = source_files(numba=numba, lowbit=lowbit)
        carried = {rel.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
                   for rel in files}
        allowed = set(sys.stdlib_module_names) | {"numpy", "tvm", "tvm_ffi", "edgert"}
        allowed |= NUMBA_DEPS if numba else set()
        for rel, path in files.items():
            bad = top_level_imports(path) - allowed
            assert not bad, f"{rel} imports {bad} at module level"
        assert "edgert.session" in carried and "edgert.board_cli" in carried
        assert not any(m.startswith(("edgert.compiler", "edgert.cli", "edgert.model_info"))
                       for m in carried)
        assert ("edgert.backends.numba_backend" in carried) == numba
        assert ("edgert.ops.lut_matmul.layout" in carried) == (numba or lowbit)


def test_bundle_archive(int_models, tmp_path):
    """``-o deploy.tar.gz``: one top folder with the package entry, the model and the pins."""
    import tarfile

    report = bundle_or_skip([int_models["host"]], tmp_path / "deploy.tar.gz")
    with tarfile.open(report.path) as tar:
        names = set(tar.getnames())
    assert {"deploy/edgert/__main__.py", "deploy/models/int_matmul.edgert",
            "deploy/requirements.txt", "deploy/tvm/lib/libtvm_runtime.so"} <= names
    assert report.archive_bytes == report.path.stat().st_size


def test_vit_int_only_bundle(tmp_path):
    """The built-in digits ViT, integer-only, from the numpy-only venv (opt-in: compiling it
    costs ~15 s)."""
    skip_unless_opted_in("EDGERT_BUNDLE", "the int-only ViT through a bundle")
    from edgert.compiler import compile_model
    from edgert.demo import demo_calib_file, demo_files

    art = compile_model(demo_files()[0], tmp_path / "vit.edgert", int_only=True,
                        calib=demo_calib_file())
    report = bundle_or_skip([art], tmp_path / "deploy")
    python = numpy_only_python(tmp_path)
    images = np.load(demo_files()[1])["images"][:16]
    np.save(tmp_path / "img.npy", images)
    run = board(python, report.path, "run", "vit", "-i", f"image={tmp_path / 'img.npy'}", "-o",
                str(tmp_path / "out.npz"), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    [want] = edgert.Session(art).run(None, {"image": images})
    with np.load(tmp_path / "out.npz") as got:
        assert_bit_exact("int-only ViT from the bundle", got["logits"].view(np.uint32),
                         want.view(np.uint32))


def test_runtime_files_offline_from_the_installed_wheels(monkeypatch, tmp_path):
    """With pip unable to download, a board like this machine gets TVM's runtime files from
    the installed wheels: the libraries and the FFI extension, no compiler, a RECORD that
    lists only what was kept (tvm_ffi finds its libraries through it)."""
    import json

    import edgert.targets.qemu as qemu
    from edgert.bundle.runtime_files import ensure_runtime_files
    from edgert.targets import host_arch

    def offline(*_args, **_kwargs):
        raise TargetError("fetching TVM's runtime for the bundle: pip download failed (test)")

    monkeypatch.setattr(qemu, "pip_download", offline)
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    folder = ensure_runtime_files(host_arch(), py, cache=tmp_path)
    files = json.loads((folder / "files.json").read_text())["files"]
    assert {"tvm/lib/libtvm_runtime.so", "tvm_ffi/lib/libtvm_ffi.so", "tvm/runtime/vm.py",
            "typing_extensions.py"} <= set(files)
    assert any(f.startswith("tvm_ffi/core.") for f in files)
    assert not any("compiler" in f or f.startswith(("tvm/relax/", "tvm/include/")) for f in files)
    for rel, size in files.items():
        assert (folder / rel).stat().st_size == size
    record = next(folder.glob("apache_tvm_ffi-*.dist-info/RECORD")).read_text().splitlines()
    assert {ln.split(",")[0] for ln in record} <= set(files) | {ln.split(",")[0] for ln in record
                                                               if ln.endswith("RECORD,,")}
    with pytest.raises(TargetError, match="pip download failed"):   # another architecture
        ensure_runtime_files("aarch64" if host_arch() != "aarch64" else "x86_64", py,
                             cache=tmp_path)


def test_numba_bundle_has_no_tvm(int_models, tmp_path):
    """``--backend numba``: no TVM files; the board's requirements pin numba, llvmlite and onnx;
    bundle.json makes numba the board CLI's default backend."""
    import json

    report = make_bundle([int_models["host"]], tmp_path / "deploy", backend="numba")
    deploy = report.path
    assert not (deploy / "tvm").exists() and not list(deploy.rglob("*.so"))
    assert (deploy / "edgert" / "backends" / "numba_backend.py").is_file()
    pins = {line.split("==")[0] for line in report.requirements}
    assert pins == {"numpy", "numba", "llvmlite", "onnx"}
    assert json.loads((deploy / "bundle.json").read_text())["backend"] == "numba"
    assert report.runtime_bytes < 2e6, report.lines()
