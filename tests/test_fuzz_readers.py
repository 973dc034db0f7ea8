"""Fuzzing the readers of untrusted files (hypothesis): the artifact reader, the ONNX wire
reader and the compiler's ONNX importer get mutated files (bytes flipped, overwritten,
inserted, deleted, truncated) and must either accept them or raise their typed error:
ArtifactError, WireError, ModelError. Any other exception is a bug.

CI runs a derandomized ``EDGERT_FUZZ_READERS`` (default 100) cases per reader; developers run
longer (``EDGERT_FUZZ_READERS=20000 python -m pytest tests/test_fuzz_readers.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from edgert.artifact import read_artifact, write_artifact  # noqa: E402
from edgert.errors import ArtifactError, ModelError  # noqa: E402
from edgert.onnx_wire import WireError, graph_io  # noqa: E402

from test_reliability_models import tiny_model  # noqa: E402

EXAMPLES = int(os.environ.get("EDGERT_FUZZ_READERS", "100"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck), print_blob=True)

MODEL = tiny_model().SerializeToString()

# one edit: (kind, position as a fraction of the length, byte value, length)
EDIT = st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]),
                 st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 255), st.integers(1, 16))


def mutate(data: bytes, edits: list[tuple[str, float, int, int]]) -> bytes:
    """``data`` after ``edits`` in order (positions as fractions of the current length)."""
    buf = bytearray(data)
    for kind, where, value, length in edits:
        if not buf:
            break
        pos = int(where * len(buf))
        if kind == "flip":
            buf[pos] ^= 1 << (value % 8)
        elif kind == "set":
            buf[pos:pos + length] = bytes([value]) * len(buf[pos:pos + length])
        elif kind == "insert":
            buf[pos:pos] = bytes([value]) * length
        elif kind == "delete":
            del buf[pos:pos + length]
        else:
            del buf[pos:]
    return bytes(buf)


@pytest.fixture(scope="module")
def artifact_bytes(tmp_path_factory) -> bytes:
    """A small artifact as the compiler writes it (manifest, model, a stand-in library and a
    build log; read_artifact does not load the library)."""
    path = tmp_path_factory.mktemp("fuzz") / "a.edgert"
    manifest = {"edgert_version": "0", "target": {"name": "x86-avx2", "arch": "x86_64"},
                "inputs": [{"name": "x", "shape": ["b", 8], "dtype": "float32"}],
                "outputs": [{"name": "y", "shape": ["b", 4], "dtype": "float32"}],
                "lib": "lib/model.so", "build_log": "build.log"}
    write_artifact(path, manifest, {"model.onnx": MODEL, "lib/model.so": bytes(range(256)) * 8,
                                    "build.log": b"== check (0.01 s)\n"})
    read_artifact(path)                                   # the intact one is accepted
    return path.read_bytes()


def test_artifact_reader(artifact_bytes, tmp_path):
    path = tmp_path / "m.edgert"

    @FUZZ
    @given(st.lists(EDIT, min_size=1, max_size=4))
    def check(edits):
        path.write_bytes(mutate(artifact_bytes, edits))
        try:
            art = read_artifact(path)
        except ArtifactError:
            return
        assert art.model_bytes and art.manifest["inputs"]

    check()


@given(st.lists(EDIT, min_size=1, max_size=4))
@FUZZ
def test_onnx_wire_reader(edits):
    try:
        inputs, outputs = graph_io(mutate(MODEL, edits))
    except WireError:
        return
    assert all(isinstance(v["name"], str) for v in inputs + outputs)


@given(st.binary(max_size=512))
@FUZZ
def test_onnx_wire_reader_on_random_bytes(data):
    try:
        graph_io(data)
    except WireError:
        pass


def test_onnx_importer(tmp_path):
    """The compiler's check stage entry (read the file, opset, checker, shape inference)."""
    from edgert.compiler.check import check_model, read_model

    path: Path = tmp_path / "m.onnx"

    @FUZZ
    @given(st.lists(EDIT, min_size=1, max_size=3))
    def check(edits):
        path.write_bytes(mutate(MODEL, edits))
        try:
            check_model(read_model(path), source=str(path))
        except ModelError:
            pass

    check()
