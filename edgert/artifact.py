"""The ``.edgert`` artifact: one zip file holding a compiled model.

Members:
    ``manifest.json``  format version, versions, target, inputs/outputs, compile options and a
                       sha256 for every other member.
    ``model.onnx``     the ONNX graph that was compiled (the contract between the compiler and
                       every backend).
    ``lib/<name>``     the compiled library for the target (absent for numba-only artifacts).
    ``build.log``      optional (UTF-8 text): each compile stage's time and what the libraries
                       (TVM, onnxruntime) printed during it; readers that do not know it
                       verify its hash like any member and ignore it.

Writing is atomic: the zip is built in a temporary file next to the destination and renamed
into place, so an interrupted compile never leaves a half-written artifact. Reading checks the
format version and every hash before anything is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgert.errors import ArtifactError
from edgert.fileio import atomic_path
from edgert.manifest_schema import check_against_graph, member_path_problem, validate_manifest

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL_MEMBER = "model.onnx"
BUILD_LOG_MEMBER = "build.log"
STORE_ABOVE = 1 << 20
"""Members of this many bytes or more are stored, not deflated: weights and machine code shrink
by a few percent at ~10 MB/s (a 30-layer LLM's artifact took minutes to pack)."""
MAX_MEMBER_BYTES = 64 << 30
"""Readers refuse an archive whose members add up to more (64 GiB: far above any edge model)."""
MAX_RATIO = 200
"""Readers refuse a member over 1 MiB that inflates by more than this (deflate's own limit is
about 1032; edgert's members, deflated below 1 MiB or stored, stay far under it)."""
MAX_MANIFEST_BYTES = 16 << 20


def sha256(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def write_artifact(path: str | os.PathLike, manifest: dict[str, Any],
                   members: dict[str, bytes]) -> Path:
    """Write an artifact atomically.

    Args:
        path: destination file (``.edgert``).
        manifest: manifest fields; ``format_version`` and ``members`` (hashes) are filled in.
        members: member name -> bytes (``model.onnx``, ``lib/...``).

    Returns:
        The destination path.
    """
    manifest = dict(manifest)
    manifest["format_version"] = FORMAT_VERSION
    manifest["members"] = {name: sha256(data) for name, data in members.items()}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as raw:
            with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                zf.writestr(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
                for name, data in members.items():
                    zf.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED
                                if len(data) < STORE_ABOVE else zipfile.ZIP_STORED)
            raw.flush()
            os.fsync(raw.fileno())
    return Path(path)


@dataclass
class Artifact:
    """A loaded, verified artifact: its manifest and its members' bytes."""

    path: Path
    manifest: dict[str, Any]
    members: dict[str, bytes]

    @property
    def model_bytes(self) -> bytes:
        """The serialized ONNX graph that was compiled."""
        return self.members[MODEL_MEMBER]

    @property
    def lib_member(self) -> str | None:
        """Name of the compiled library member, if the artifact has one."""
        return self.manifest.get("lib")

    @property
    def build_log(self) -> str | None:
        """The compile's build log (text), or None for artifacts written without one."""
        data = self.members.get(self.manifest.get("build_log", BUILD_LOG_MEMBER))
        return None if data is None else data.decode("utf-8", "replace")


def read_artifact(path: str | os.PathLike) -> Artifact:
    """Open and verify an artifact: the format version, the manifest against its schema
    (:mod:`edgert.manifest_schema`), the archive's entries (no path outside it, no member
    that inflates past :data:`MAX_MEMBER_BYTES` or by more than :data:`MAX_RATIO`), the sha256
    of every member, and the manifest's inputs and outputs against the graph it hashes.

    Raises:
        ArtifactError: the file is missing, not an artifact, from a newer edgert, or damaged
            (the message names the member or manifest field at fault). Every error of the
            readers underneath (zip, deflate, JSON, protobuf) ends as this one.
    """
    path = Path(path)
    if path.is_dir():
        raise ArtifactError(f"{path}: is a directory, not an artifact file")
    if not path.is_file():
        raise ArtifactError(f"{path}: no such artifact file")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = _checked_entries(path, zf)
            if MANIFEST not in infos:
                raise ArtifactError(f"{path}: not an edgert artifact (no {MANIFEST})")
            manifest = _parse_manifest(path, _read_member(path, zf, infos[MANIFEST]))
            validate_manifest(manifest, str(path), infos)
            members = {}
            for name, digest in manifest["members"].items():
                data = _read_member(path, zf, infos[name])
                if sha256(data) != digest:
                    raise ArtifactError(
                        f"{path}: member {name!r} is damaged (sha256 does not match the manifest)"
                    )
                members[name] = data
    except ArtifactError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError,
            NotImplementedError, RuntimeError, OverflowError, zlib.error) as e:
        raise ArtifactError(f"{path}: not a valid artifact (damaged zip: "
                            f"{type(e).__name__}: {e})") from None
    check_against_graph(manifest, members[MODEL_MEMBER], str(path))
    return Artifact(path, manifest, members)


def _checked_entries(path: Path, zf: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """The archive's entries by name, refusing names that leave the archive (absolute,
    ``..``), repeated names, and sizes past the limits (a zip bomb)."""
    infos: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in zf.infolist():
        why = member_path_problem(info.filename)
        if why:
            raise ArtifactError(f"{path}: refused: archive entry {info.filename!r} {why}")
        if info.filename in infos:
            raise ArtifactError(f"{path}: refused: archive entry {info.filename!r} appears twice")
        if info.file_size > MAX_MEMBER_BYTES or (
                info.file_size > (1 << 20) and info.file_size > MAX_RATIO * max(info.compress_size, 1)):
            raise ArtifactError(
                f"{path}: refused: member {info.filename!r} would inflate to {info.file_size} "
                f"bytes from {info.compress_size} (limits: {MAX_MEMBER_BYTES} bytes, ratio "
                f"{MAX_RATIO}); a zip bomb or a damaged directory")
        total += info.file_size
        infos[info.filename] = info
    if total > MAX_MEMBER_BYTES:
        raise ArtifactError(f"{path}: refused: the members add up to {total} bytes "
                            f"(limit {MAX_MEMBER_BYTES})")
    return infos


def _read_member(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """A member's bytes, read at most to its declared size (the directory's size is checked
    against the limits; a stream that inflates past it is cut and fails the CRC)."""
    try:
        with zf.open(info) as f:
            data = f.read(info.file_size + 1)
    except Exception as e:  # BadZipFile (CRC), zlib.error (deflate stream), EOFError...
        # zipfile's own checks fire before our hash when the stored bytes were altered.
        raise ArtifactError(f"{path}: member {info.filename!r} is damaged "
                            f"({type(e).__name__}: {e})") from None
    if len(data) != info.file_size:
        raise ArtifactError(f"{path}: member {info.filename!r} is damaged (inflates to "
                            f"{len(data)}{'+' if len(data) > info.file_size else ''} bytes, "
                            f"the directory says {info.file_size})")
    return data


def _parse_manifest(path: Path, raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{path}: member {MANIFEST!r} is {len(raw)} bytes (limit "
                            f"{MAX_MANIFEST_BYTES})")
    try:
        manifest = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ArtifactError(f"{path}: member {MANIFEST!r} is damaged ({e})") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path}: member {MANIFEST!r} is damaged (not a JSON object)")
    version = manifest.get("format_version")
    if type(version) is not int:
        raise ArtifactError(f"{path}: {MANIFEST} has no valid format_version")
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: artifact format version {version} is newer than this edgert supports "
            f"({FORMAT_VERSION}); upgrade edgert or recompile the model with this version"
        )
    if type(version) is not int or version < 1:
        raise ArtifactError(f"{path}: unknown artifact format version {version}")
    if not isinstance(manifest.get("members"), dict):
        raise ArtifactError(f"{path}: {MANIFEST} lists no members")
    return manifest
