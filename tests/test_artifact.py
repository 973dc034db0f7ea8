"""The .edgert artifact: round trip in a fresh process, damage detection, atomic writes."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import edgert
from edgert.artifact import FORMAT_VERSION, MANIFEST, read_artifact, write_artifact
from edgert.errors import ArtifactError, TargetError
from edgert.targets import resolve_host

from conftest import random_input


def _rewrite(src, dst, *, manifest=None, replace=None):
    """Copy an artifact zip, optionally changing the manifest or one member's bytes."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == MANIFEST and manifest is not None:
                data = json.dumps(manifest(json.loads(data))).encode()
            if replace and item.filename in replace:
                data = replace[item.filename](data)
            zout.writestr(item, data)
    return dst


def test_manifest_contents(mlp_artifact):
    art = read_artifact(mlp_artifact)
    m = art.manifest
    assert m["format_version"] == FORMAT_VERSION
    assert m["edgert_version"] == edgert.__version__
    assert m["tvm_version"].startswith("0.27")
    assert m["target"]["name"] == resolve_host().name     # "host" resolves on this machine
    assert m["inputs"] == [{"name": "x", "shape": ["batch", 20], "dtype": "float32"}]
    assert m["outputs"] == [{"name": "y", "shape": ["batch", 5], "dtype": "float32"}]
    assert set(m["members"]) == {"model.onnx", "lib/model.so", "build.log"}
    assert m["build_log"] == "build.log" and "== build (" in art.build_log
    assert m["compile_options"]["target"] == "host"
    assert art.members["lib/model.so"][:4] == b"\x7fELF"


def test_round_trip_in_fresh_process(mlp_artifact, tmp_path):
    x = random_input(["batch", 20], 3)
    np.save(tmp_path / "x.npy", x)
    code = (
        "import sys, numpy as np, edgert;"
        f"s = edgert.Session({str(mlp_artifact)!r});"
        f"np.save({str(tmp_path / 'y.npy')!r}, s.run(None, {{'x': np.load({str(tmp_path / 'x.npy')!r})}})[0])"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    [here] = edgert.Session(mlp_artifact).run(None, {"x": x})
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), here)


@pytest.mark.parametrize("member", ["model.onnx", "lib/model.so"])
def test_flipped_byte_names_the_member(mlp_artifact, tmp_path, member):
    raw = bytearray(mlp_artifact.read_bytes())
    with zipfile.ZipFile(mlp_artifact) as zf:
        info = zf.getinfo(member)
    # Local header: 30 bytes + name + extra field, then the member's (compressed) data.
    name_len = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little")
    extra_len = int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    raw[start + info.compress_size // 2] ^= 0x5A
    bad = tmp_path / "bad.edgert"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match=f"member '{member}' is damaged"):
        edgert.Session(bad)


def test_hash_mismatch_names_the_member(mlp_artifact, tmp_path):
    # A consistent zip (valid CRCs) whose member differs from what the manifest hashed.
    bad = _rewrite(mlp_artifact, tmp_path / "bad.edgert",
                   replace={"model.onnx": lambda d: d + b"\0"})
    with pytest.raises(ArtifactError, match="member 'model.onnx' is damaged .sha256"):
        read_artifact(bad)


def test_future_format_version_is_refused(mlp_artifact, tmp_path):
    bad = _rewrite(mlp_artifact, tmp_path / "future.edgert",
                   manifest=lambda m: {**m, "format_version": FORMAT_VERSION + 1})
    with pytest.raises(ArtifactError, match="newer than this edgert supports"):
        edgert.Session(bad)


def test_not_an_artifact(tmp_path):
    junk = tmp_path / "junk.edgert"
    junk.write_bytes(b"not a zip file at all")
    with pytest.raises(ArtifactError, match="not a valid artifact"):
        read_artifact(junk)
    with pytest.raises(ArtifactError, match="no such artifact"):
        read_artifact(tmp_path / "missing.edgert")


def test_target_this_machine_cannot_run(mlp_artifact, tmp_path):
    def to_rpi5(m):
        m["target"] = {**m["target"], "name": "rpi5"}
        return m

    other = _rewrite(mlp_artifact, tmp_path / "rpi5.edgert", manifest=to_rpi5)
    with pytest.raises(TargetError, match="compiled for rpi5.*aarch64"):
        edgert.Session(other)


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    dest = tmp_path / "out.edgert"
    dest.write_bytes(b"previous version")
    real = zipfile.ZipFile.writestr

    def failing(self, name, data, *a, **k):
        if name == "lib/model.so":
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-write
        return real(self, name, data, *a, **k)

    monkeypatch.setattr(zipfile.ZipFile, "writestr", failing)
    with pytest.raises(KeyboardInterrupt):
        write_artifact(dest, {"inputs": [], "outputs": []},
                       {"model.onnx": b"m", "lib/model.so": b"x" * 1000})
    assert dest.read_bytes() == b"previous version"
    assert [p.name for p in tmp_path.iterdir()] == ["out.edgert"]


def test_failed_compile_leaves_no_file(tmp_path):
    from edgert.compiler import compile_model
    from edgert.errors import ModelError

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(ModelError):
        compile_model(bad, tmp_path / "bad.edgert")
    assert not (tmp_path / "bad.edgert").exists()
