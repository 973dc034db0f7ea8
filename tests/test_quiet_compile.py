"""A quiet compile: what TVM and the other libraries print (from C++, on fd 2) goes into the
build log (the artifact's ``build.log``, ``--verbose``, ``edgert inspect --build-log``); the
terminal shows each stage with its time; a failure is one line naming the kept log; ``--help``
fits 80 columns."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import edgert
from edgert.artifact import read_artifact
from edgert.capture import captured, released
from edgert.errors import CompileError, InputError

from conftest import run_cli

DATA = Path(edgert.__file__).resolve().parent / "data"
TVM_WARNING = "Warning: Fast mode segfaults"        # TVM 0.27 prints it for the ViT's Take


def test_captured_takes_what_native_code_writes_to_fds_1_and_2(capfd):
    sink: list[str] = []
    with captured(sink):
        os.write(2, b"from C on fd 2\n")
        os.write(1, b"from C on fd 1\n")
        print("from Python", file=sys.stderr)
        with captured(sink):                       # nested: the outer one keeps the text
            os.write(2, b"inner\n")
    os.write(2, b"after\n")
    assert sink == ["from C on fd 2\nfrom C on fd 1\nfrom Python\ninner\n"]
    seen = capfd.readouterr()
    assert seen.err == "after\n" and seen.out == ""


def test_released_callbacks_print_to_the_terminal_inside_a_capture(capfd):
    sink: list[str] = []
    shout = released(lambda text: print(text, file=sys.stderr))
    with captured(sink):
        os.write(2, b"library\n")
        shout("progress")
        os.write(2, b"library again\n")
    assert sink == ["library\nlibrary again\n"]
    assert capfd.readouterr().err == "progress\n"
    assert released(None) is None


def test_artifacts_without_a_build_log_still_read(tmp_path):
    old = Path(__file__).resolve().parent / "data" / "artifacts_0.2.0" / "vit_int.edgert"
    art = read_artifact(old)
    assert art.build_log is None and "build.log" not in art.members
    res = run_cli("inspect", str(old), "--build-log")
    assert res.returncode == InputError.exit_code and "has no build log" in res.stderr


def test_compile_shows_stages_not_tvm_warnings(tmp_path):
    art = tmp_path / "vit.edgert"
    res = run_cli("compile", str(DATA / "vit_digits.onnx"), "-o", str(art))
    assert res.returncode == 0, res.stderr
    terminal = res.stdout + res.stderr
    assert "Warning" not in terminal and "transform.h" not in terminal
    for stage in ("check", "lower", "build", "package"):
        assert re.search(rf"^  {stage} +\d+\.\d\d s$", res.stdout, re.M), (stage, res.stdout)
    log = read_artifact(art).build_log
    assert TVM_WARNING in log
    assert re.search(r"^== build \(\d+\.\d\d s\)\n.*" + TVM_WARNING, log, re.M | re.S)
    assert "build.log" in read_artifact(art).manifest["members"]

    shown = run_cli("inspect", str(art), "--build-log")
    assert shown.returncode == 0 and shown.stdout == log


def test_verbose_int_only_compile_prints_the_build_log(tmp_path):
    art = tmp_path / "vit_int.edgert"
    res = run_cli("compile", str(DATA / "vit_digits.onnx"), "-o", str(art), "--int-only",
                  "--calib", str(DATA / "vit_digits_calib.npz"), "--verbose")
    assert res.returncode == 0, res.stderr
    for stage in ("check", "calibrate", "quantize", "lower", "build"):
        assert re.search(rf"^  {stage} +\d+\.\d\d s$", res.stdout, re.M), stage
    assert TVM_WARNING in res.stderr and "== calibrate (" in res.stderr
    assert TVM_WARNING not in res.stdout


def test_tvm_failure_is_one_line_and_keeps_the_log(monkeypatch, tmp_path, capfd):
    from edgert import cli
    from edgert.compiler import lower

    def failing_build(*args, **kwargs):
        os.write(2, b"[12:00:00] tvm/src/fake.cc:1: Warning: something TVM says\n")
        raise CompileError("m.onnx: TVM failed to compile for x86-avx2: InternalError: boom")

    monkeypatch.setattr(lower, "build_library", failing_build)
    out = tmp_path / "m.edgert"
    monkeypatch.setattr(sys, "argv", ["edgert", "compile", str(DATA / "vit_digits.onnx"),
                                      "-o", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == CompileError.exit_code
    seen = capfd.readouterr()
    errors = [ln for ln in seen.err.splitlines() if ln.strip()]
    kept = tmp_path / "m.build.log"
    assert errors == [f"error: m.onnx: TVM failed to compile for x86-avx2: InternalError: boom "
                      f"(build log: {kept})"]
    assert "something TVM says" not in seen.err + seen.out
    assert not out.exists()
    text = kept.read_text()
    assert "== build (" in text and "failed)" in text and "something TVM says" in text
    assert "CompileError: " in text


def test_help_fits_80_columns():
    env = {**os.environ, "COLUMNS": "80"}
    for args in (["--help"], ["compile", "--help"], ["inspect", "--help"], ["tune", "--help"]):
        res = subprocess.run([sys.executable, "-m", "edgert", *args], capture_output=True,
                             text=True, env=env, timeout=120)
        assert res.returncode == 0, res.stderr
        lines = res.stdout.splitlines()
        assert max(len(ln) for ln in lines) <= 80, args
        # Paragraphs are rewrapped: no line of running text breaks after a word or two.
        body = [ln for ln in lines if ln.startswith("  ") and not ln.lstrip().startswith("-")]
        assert not [ln for ln in body if len(ln.split()) == 1 and len(ln.strip()) < 8
                    and ln.strip().isalpha()], (args, res.stdout)
    compile_help = subprocess.run([sys.executable, "-m", "edgert", "compile", "--help"],
                                  capture_output=True, text=True, env=env, timeout=120).stdout
    assert "--verbose" in compile_help and "supported: all unsupported" in compile_help
