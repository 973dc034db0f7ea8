"""Damaged and hostile artifacts: every member removed in turn, bytes flipped at many offsets,
truncations, edited manifests, a foreign target, a newer format, zip bombs and path traversal.
Each is refused with a typed error (ArtifactError, or TargetError for the target) or, where
the damage is in bytes nobody reads, loads and computes exactly what the intact one does:
never a crash, never a silent wrong answer. The counts are in docs/reliability.md."""

from __future__ import annotations

import copy
import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import edgert
from edgert.artifact import MANIFEST, read_artifact
from edgert.errors import ArtifactError, TargetError

from conftest import random_input

FLIPS = 300
TRUNCATIONS = 60


@pytest.fixture(scope="module")
def intact(mlp_artifact) -> tuple[bytes, np.ndarray, np.ndarray]:
    """(the artifact's bytes, an input, the intact artifact's output for it)."""
    x = random_input(["batch", 20], 3, seed=7)
    return mlp_artifact.read_bytes(), x, edgert.Session(mlp_artifact).run(None, {"x": x})[0]


def _members(raw: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def _zip(members: dict[str, bytes], path: Path) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _loads_and_agrees(path: Path, x: np.ndarray, want: np.ndarray) -> str:
    """'refused' (a typed error) or 'same' (loads, computes the intact output bit for bit);
    anything else fails the test."""
    try:
        sess = edgert.Session(path)
    except (ArtifactError, TargetError):
        return "refused"
    [got] = sess.run(None, {"x": x})
    np.testing.assert_array_equal(got, want)
    return "same"


def test_every_member_removed_in_turn(intact, tmp_path):
    raw, _, _ = intact
    members = _members(raw)
    assert set(members) == {MANIFEST, "model.onnx", "lib/model.so", "build.log"}
    for name in members:
        rest = {k: v for k, v in members.items() if k != name}
        with pytest.raises(ArtifactError, match="no manifest.json|does not hold"):
            read_artifact(_zip(rest, tmp_path / "cut.edgert"))


def test_flipped_bytes_at_many_offsets(intact, tmp_path):
    raw, x, want = intact
    rng = np.random.default_rng(2024)
    offsets = rng.choice(len(raw), size=FLIPS, replace=False)
    seen = {"refused": 0, "same": 0}
    for off in offsets:
        bad = bytearray(raw)
        bad[off] ^= 1 << int(rng.integers(8))
        path = tmp_path / "flip.edgert"
        path.write_bytes(bytes(bad))
        seen[_loads_and_agrees(path, x, want)] += 1
    assert sum(seen.values()) == FLIPS
    assert seen["refused"] > 0.8 * FLIPS, seen   # most bytes are hashed or CRC-checked data


def test_flips_inside_the_deflate_streams(intact, tmp_path):
    """The compressed data of each deflated member, flipped at 40 offsets each (these escaped
    as a raw zlib.error before)."""
    raw, x, want = intact
    rng = np.random.default_rng(7)
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        infos = [i for i in zf.infolist() if i.compress_type == zipfile.ZIP_DEFLATED]
    for info in infos:
        name_len = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little")
        extra_len = int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
        start = info.header_offset + 30 + name_len + extra_len
        for off in rng.integers(start, start + info.compress_size, size=40):
            bad = bytearray(raw)
            bad[off] ^= 0xFF
            path = tmp_path / "deflate.edgert"
            path.write_bytes(bytes(bad))
            assert _loads_and_agrees(path, x, want) == "refused"


def test_truncated_at_many_lengths(intact, tmp_path):
    raw, _, _ = intact
    lengths = sorted({0, 1, 4, 22, len(raw) - 1, len(raw) - 22,
                      *np.random.default_rng(3).integers(1, len(raw), TRUNCATIONS - 6).tolist()})
    for n in lengths:
        path = tmp_path / "short.edgert"
        path.write_bytes(raw[:n])
        with pytest.raises(ArtifactError):
            read_artifact(path)


def _edit(keys: tuple, value: object) -> Callable[[dict], dict]:
    """Set (or with ``_DELETE`` remove) the manifest field at ``keys``."""
    def apply(m: dict) -> dict:
        node = m
        for k in keys[:-1]:
            node = node[k]
        last = keys[-1]
        if isinstance(node, list):
            node[last] = value
        elif value is _DELETE:
            del node[last]
        else:
            node[last] = value
        return m
    return apply


_DELETE = object()
# edit -> the message it must give (ArtifactError unless said otherwise)
MANIFEST_EDITS: dict[str, tuple[Callable[[dict], dict], str]] = {
    "outputs_empty": (_edit(('outputs',), []), "outputs must be a non-empty list"),
    "inputs_empty": (_edit(('inputs',), []), "inputs must be a non-empty list"),
    "inputs_not_list": (_edit(('inputs',), "x"), "inputs must be a non-empty list"),
    "input_not_object": (_edit(('inputs', 0), 5), r"inputs\[0\] must be an object"),
    "input_name_missing": (_edit(('inputs', 0, 'name'), _DELETE), r"inputs\[0\].name"),
    "input_name_renamed": (_edit(('inputs', 0, 'name'), "z"), "are not the graph's"),
    "input_dtype_bad": (_edit(('inputs', 0, 'dtype'), "float128"), r"inputs\[0\].dtype must be"),
    "input_dtype_changed": (_edit(('inputs', 0, 'dtype'), "int8"), "declared as int8"),
    "input_rank_changed": (_edit(('inputs', 0, 'shape'), ["batch", 20, 1]), "declared as float32"),
    "input_dim_changed": (_edit(('inputs', 0, 'shape'), ["batch", 21]), "declared as float32"),
    "input_dim_negative": (_edit(('inputs', 0, 'shape'), ["batch", -3]), r"shape\[1\] must be an int"),
    "input_dim_float": (_edit(('inputs', 0, 'shape'), ["batch", 20.0]), r"shape\[1\] must be an int"),
    "input_dim_bool": (_edit(('inputs', 0, 'shape'), [True, 20]), r"shape\[0\] must be an int"),
    "input_shape_huge_rank": (_edit(('inputs', 0, 'shape'), [1] * 100), "at most 32 dims"),
    "input_shape_not_list": (_edit(('inputs', 0, 'shape'), "batch,20"), "must be a list"),
    "input_range_bad": (_edit(('inputs', 0, 'range'), {"min": 5, "max": 1}), "min <= max"),
    "duplicate_input": (lambda m: {**m, "inputs": m["inputs"] * 2}, "repeats 'x'"),
    "output_renamed": (_edit(('outputs', 0, 'name'), "logits"), "are not the graph's"),
    "extra_output": (lambda m: {**m, "outputs": m["outputs"] + [
        {"name": "y2", "shape": [1], "dtype": "float32"}]}, "are not the graph's"),
    "target_missing": (_edit(('target',), _DELETE), "target must be an object"),
    "target_not_object": (_edit(('target',), "x86-avx2"), "target must be an object"),
    "target_name_number": (_edit(('target', 'name'), 7), "target.name must be"),
    "target_foreign": (_edit(('target', 'name'), "rpi5"), "TargetError:compiled for rpi5"),
    "target_unknown": (_edit(('target', 'name'), "pdp11"), "TargetError:unknown target 'pdp11'"),
    "format_newer": (_edit(('format_version',), 2), "newer than this edgert supports"),
    "format_string": (_edit(('format_version',), "1"), "no valid format_version"),
    "format_zero": (_edit(('format_version',), 0), "unknown artifact format version 0"),
    "format_bool": (_edit(('format_version',), True), "no valid format_version"),
    "members_missing": (_edit(('members',), _DELETE), "lists no members"),
    "members_list": (_edit(('members',), ["model.onnx"]), "lists no members"),
    "member_hash_wrong": (_edit(('members', 'model.onnx'), "0" * 64), "'model.onnx' is damaged"),
    "member_hash_short": (_edit(('members', 'model.onnx'), "abc"), "must be 64 lowercase hex"),
    "member_not_in_zip": (_edit(('members', 'extra.bin'), "0" * 64), "does not hold"),
    "member_traversal": (_edit(('members', '../../etc/passwd'), "0" * 64), "component"),
    "member_absolute": (_edit(('members', '/etc/passwd'), "0" * 64), "is absolute"),
    "model_unlisted": (lambda m: {**m, "members": {k: v for k, v in m["members"].items()
                                                   if k != "model.onnx"}}, "'model.onnx'"),
    "lib_outside": (_edit(('lib',), "../model.so"), "lib must name a member"),
    "lib_number": (_edit(('lib',), 3), "lib must name a member"),
    "lib_absent": (_edit(('lib',), _DELETE), "no compiled library"),
    "build_log_other": (_edit(('build_log',), "nope.log"), "build_log must name"),
    "version_number": (_edit(('edgert_version',), 2), "edgert_version must be a string"),
    "quantization_list": (_edit(('quantization',), []), "quantization must be an object"),
    "io_bad_scale": (_edit(('quantization',), {"io": {"inputs": {"x": {
        "dtype": "int8", "scale": float("nan"), "axis": None}}}}), "scale must be a finite"),
    "io_unknown_name": (_edit(('quantization',), {"io": {"outputs": {"q": {
        "dtype": "int8", "scale": 0.1, "axis": None}}}}), "names no model output"),
    "io_per_channel_no_axis": (_edit(('quantization',), {"io": {"outputs": {"y": {
        "dtype": "int8", "scale": [0.1, 0.2], "axis": None}}}}), "axis must be an int"),
    "not_an_object": (lambda m: [m], "not a JSON object"),
}


def _with_manifest(raw: bytes, edit: Callable[[dict], dict], path: Path,
                   text: str | None = None) -> Path:
    members = _members(raw)
    manifest = edit(copy.deepcopy(json.loads(members[MANIFEST])))
    members[MANIFEST] = (text if text is not None else json.dumps(manifest)).encode()
    return _zip(members, path)


@pytest.mark.parametrize("case", sorted(MANIFEST_EDITS))
def test_edited_manifest_is_refused(intact, tmp_path, case):
    raw, x, _ = intact
    edit, expected = MANIFEST_EDITS[case]
    error, _, pattern = expected.rpartition(":")
    path = _with_manifest(raw, edit, tmp_path / f"{case}.edgert")
    with pytest.raises(TargetError if error == "TargetError" else ArtifactError, match=pattern):
        edgert.Session(path).run(None, {"x": x})


@pytest.mark.parametrize("text", ["", "{", "null", "[]", '"x"', "\xff\xfe", "{" * 100000,
                                  '{"format_version": 1e999}', '{"format_version": 1, "x": '
                                  + "[" * 100000 + "]" * 100000 + "}"])
def test_unparsable_manifest_is_refused(intact, tmp_path, text):
    raw, _, _ = intact
    path = _with_manifest(raw, lambda m: m, tmp_path / "m.edgert", text=text)
    with pytest.raises(ArtifactError):
        read_artifact(path)


def test_hostile_archive_entries_are_refused(intact, tmp_path):
    raw, _, _ = intact
    for name in ("../evil.so", "/tmp/evil", "lib/../../x", "a\\b", "c:evil"):
        members = {**_members(raw), name: b"payload"}
        with pytest.raises(ArtifactError, match="refused: archive entry"):
            read_artifact(_zip(members, tmp_path / "evil.edgert"))
    path = tmp_path / "twice.edgert"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in _members(raw).items():
            zf.writestr(name, data)
        with pytest.warns(UserWarning):
            zf.writestr("model.onnx", b"a second model")
    with pytest.raises(ArtifactError, match="appears twice"):
        read_artifact(path)


def test_zip_bombs_are_refused_without_inflating(intact, tmp_path):
    raw, _, _ = intact
    members = _members(raw)
    members["lib/model.so"] = bytes(64 << 20)            # 64 MiB of zeros: deflates ~1000x
    bomb = _zip(members, tmp_path / "bomb.edgert")
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(ArtifactError, match="zip bomb"):
        read_artifact(bomb)
    # A directory that understates a member's size: reading stops at the stated size.
    liar = bytearray(_zip(_members(raw), tmp_path / "x.edgert").read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(liar))) as zf:
        info = zf.getinfo("model.onnx")
    pos = liar.find(b"PK\x01\x02")
    while pos >= 0:
        name_len = int.from_bytes(liar[pos + 28:pos + 30], "little")
        if liar[pos + 46:pos + 46 + name_len] == b"model.onnx":
            liar[pos + 24:pos + 28] = (info.file_size // 2).to_bytes(4, "little")
        pos = liar.find(b"PK\x01\x02", pos + 4)
    path = tmp_path / "liar.edgert"
    path.write_bytes(bytes(liar))
    with pytest.raises(ArtifactError, match="model.onnx"):
        read_artifact(path)


def test_not_a_file(tmp_path):
    with pytest.raises(ArtifactError, match="is a directory"):
        read_artifact(tmp_path)
    with pytest.raises(ArtifactError, match="no such artifact"):
        read_artifact(tmp_path / "nope.edgert")
