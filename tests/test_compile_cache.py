"""The compile cache (:mod:`edgert.compiler.compile_cache`): a second identical compile returns
the first one's artifact (the cache's counters and the ``cached`` stage say so, never a
timing), every input of a compile changes the key, damaged entries are compiled again, the
cache stays under its size bound, and ``--no-cache`` / ``EDGERT_NO_COMPILE_CACHE`` bypass it.

The test session runs with the cache off (``tests/conftest.py``); these tests turn it on, each
with a folder of its own.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile

import numpy as np
import onnx
import pytest

from edgert import Session
from edgert.artifact import MANIFEST, read_artifact
from edgert.compiler import compile_cache, compile_model
from edgert.compiler.options import CompileOptions
from edgert.compiler.stages import prepare

from conftest import lowbit_mlp, run_cli


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """The compile cache on, in a folder of this test's own."""
    folder = tmp_path / "cache"
    monkeypatch.delenv(compile_cache.OFF_ENV, raising=False)
    monkeypatch.setenv(compile_cache.DIR_ENV, str(folder))
    return folder


def _entries(folder) -> list:
    return sorted(folder.glob(f"*/artifact/{compile_cache.ARTIFACT}"))


def _stats() -> compile_cache.Stats:
    return dataclasses.replace(compile_cache.STATS)


def test_second_compile_returns_the_first_ones_artifact(cache_dir, tmp_path):
    model = lowbit_mlp(tmp_path / "mlp.onnx", rows=4, k=32, h=16, n=8)
    fresh = compile_model(model, tmp_path / "fresh.edgert", cache=False)
    assert _entries(cache_dir) == []
    before = _stats()
    first = compile_model(model, tmp_path / "first.edgert")
    assert (compile_cache.STATS.stores, compile_cache.STATS.hits) == (before.stores + 1, before.hits)
    stages: list[str] = []
    second = compile_model(model, tmp_path / "second.edgert",
                           on_stage_done=lambda name, _s: stages.append(name))
    assert compile_cache.STATS.hits == before.hits + 1 and stages == ["cached"]
    assert len(_entries(cache_dir)) == 1
    assert second.read_bytes() == first.read_bytes()

    # the same artifact as a compile without the cache, but for the time stamps
    want, got = read_artifact(fresh), read_artifact(second)
    assert set(want.members) == set(got.members)
    for name in want.members:
        if name != want.manifest["build_log"]:         # each stage's time
            assert got.members[name] == want.members[name], name
    drop = lambda m: {k: v for k, v in m.items() if k not in ("created", "members")}  # noqa: E731
    assert drop(got.manifest) == drop(want.manifest)
    x = np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)
    np.testing.assert_array_equal(Session(second).run(None, {"x": x})[0],
                                  Session(fresh).run(None, {"x": x})[0])


def _key(model, **options) -> str:
    return compile_cache.cache_key(model, prepare(model, CompileOptions(**options)))


def test_every_input_of_a_compile_changes_the_key(tmp_path, monkeypatch):
    model = lowbit_mlp(tmp_path / "mlp.onnx", rows=4, k=32, h=16, n=8)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.ones((2, 4, 32), np.float32))
    base = _key(model, int_only=True, calib=calib)
    assert base == _key(model, int_only=True, calib=calib)
    keys = {"base": base,
            "threads": _key(model, int_only=True, calib=calib, threads=1),
            "fp32": _key(model),
            "target": _key(model, target="rpi5", int_only=True, calib=calib)}
    np.savez(calib, x=np.full((2, 4, 32), 2, np.float32))              # other samples
    keys["calib data"] = _key(model, int_only=True, calib=calib)
    (tmp_path / "other").mkdir()
    other = lowbit_mlp(tmp_path / "other" / "mlp.onnx", rows=4, k=32, h=16, n=9)
    keys["model bytes"] = _key(other, int_only=True, calib=calib)
    renamed = tmp_path / "renamed.onnx"
    renamed.write_bytes(model.read_bytes())
    keys["model name"] = _key(renamed, int_only=True, calib=calib)
    monkeypatch.setattr(compile_cache, "source_digest", lambda: "0" * 64)  # edited compiler
    keys["edgert source"] = _key(model, int_only=True, calib=calib)
    assert len(set(keys.values())) == len(keys), keys
    # calibration samples given from Python: never cached
    assert _key(model, int_only=True, calib=[{"x": np.ones((4, 32), np.float32)}]) is None


def test_external_data_files_are_part_of_the_key(tmp_path):
    src = onnx.load(lowbit_mlp(tmp_path / "mlp.onnx", rows=4, k=64, h=32, n=8))
    path = tmp_path / "ext" / "mlp.onnx"
    path.parent.mkdir()
    onnx.save(src, path, save_as_external_data=True, location="weights.bin",
              size_threshold=0)
    first = _key(path)
    weights = path.parent / "weights.bin"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert _key(path) != first


def test_a_damaged_entry_is_compiled_again(cache_dir, tmp_path):
    model = lowbit_mlp(tmp_path / "mlp.onnx", rows=4, k=32, h=16, n=8)
    compile_model(model, tmp_path / "a.edgert")
    (entry,) = _entries(cache_dir)
    with zipfile.ZipFile(entry) as zf:                    # a member's bytes changed
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    lib = next(name for name in members if name.startswith("lib/"))
    members[lib] = members[lib][:-1] + bytes([members[lib][-1] ^ 0xFF])
    with zipfile.ZipFile(entry, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    before = _stats()
    out = compile_model(model, tmp_path / "b.edgert")
    assert compile_cache.STATS.damaged == before.damaged + 1
    assert compile_cache.STATS.stores == before.stores + 1
    read_artifact(out)                                    # verifies every member
    read_artifact(entry)


def test_least_recently_used_entries_go_past_the_bound(cache_dir):
    for i, name in enumerate(["old", "mid", "new"]):
        path = cache_dir / name / "artifact" / compile_cache.ARTIFACT
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x" * 1000)
        os.utime(path, (1000 + i, 1000 + i))
    (cache_dir / "half-made" / "artifact").mkdir(parents=True)   # being compiled elsewhere
    os.utime(cache_dir / "old" / "artifact" / compile_cache.ARTIFACT, (5000, 5000))  # used
    assert compile_cache.evict(keep="mid", limit=2000) == ["new"]
    assert sorted(p.name for p in cache_dir.iterdir()) == ["half-made", "mid", "old"]
    assert compile_cache.evict(limit=0) == ["mid", "old"]


def test_cli_reuses_a_compile_and_no_cache_bypasses_it(cache_dir, tmp_path, monkeypatch):
    model = lowbit_mlp(tmp_path / "mlp.onnx", rows=4, k=32, h=16, n=8)
    out = tmp_path / "mlp.edgert"
    first = run_cli("compile", str(model), "-o", str(out))
    assert first.returncode == 0, first.stderr
    assert "cached" not in first.stdout and len(_entries(cache_dir)) == 1
    again = run_cli("compile", str(model), "-o", str(out))
    assert again.returncode == 0, again.stderr
    assert "cached" in again.stdout and "build" not in again.stdout
    bypass = run_cli("compile", str(model), "-o", str(out), "--no-cache")
    assert bypass.returncode == 0, bypass.stderr
    assert "cached" not in bypass.stdout and "build" in bypass.stdout
    monkeypatch.setenv(compile_cache.OFF_ENV, "1")
    assert not compile_cache.enabled(None) and compile_cache.enabled(True)
    before = _stats()
    compile_model(model, tmp_path / "off.edgert")
    assert compile_cache.STATS == before
