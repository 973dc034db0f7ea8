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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgert.errors import ArtifactError
from edgert.fileio import atomic_path

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL_MEMBER = "model.onnx"
BUILD_LOG_MEMBER = "build.log"
STORE_ABOVE = 1 << 20
"""Members of this many bytes or more are stored, not deflated: weights and machine code shrink
by a few percent at ~10 MB/s (a 30-layer LLM's artifact took minutes to pack)."""


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
    """Open and verify an artifact (format version, member list, sha256 of every member).

    Raises:
        ArtifactError: the file is missing, not an artifact, from a newer edgert, or damaged
            (the message names the member whose hash does not match).
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such artifact file")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if MANIFEST not in names:
                raise ArtifactError(f"{path}: not an edgert artifact (no {MANIFEST})")
            manifest = _parse_manifest(path, zf.read(MANIFEST))
            members = {}
            for name, digest in manifest["members"].items():
                if name not in names:
                    raise ArtifactError(f"{path}: member {name!r} is missing")
                data = _read_member(path, zf, name)
                if sha256(data) != digest:
                    raise ArtifactError(
                        f"{path}: member {name!r} is damaged (sha256 does not match the manifest)"
                    )
                members[name] = data
    except zipfile.BadZipFile as e:
        raise ArtifactError(f"{path}: not a valid artifact (damaged zip: {e})") from None
    if MODEL_MEMBER not in members:
        raise ArtifactError(f"{path}: member {MODEL_MEMBER!r} is missing")
    return Artifact(path, manifest, members)


def _read_member(path: Path, zf: zipfile.ZipFile, name: str) -> bytes:
    try:
        return zf.read(name)
    except Exception as e:  # BadZipFile (CRC), zlib.error (deflate stream), EOFError
        # zipfile's own checks fire before our hash when the stored bytes were altered.
        raise ArtifactError(f"{path}: member {name!r} is damaged ({e})") from None


def _parse_manifest(path: Path, raw: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: member {MANIFEST!r} is damaged ({e})") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path}: member {MANIFEST!r} is damaged (not a JSON object)")
    version = manifest.get("format_version")
    if not isinstance(version, int):
        raise ArtifactError(f"{path}: {MANIFEST} has no valid format_version")
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: artifact format version {version} is newer than this edgert supports "
            f"({FORMAT_VERSION}); upgrade edgert or recompile the model with this version"
        )
    if version < 1:
        raise ArtifactError(f"{path}: unknown artifact format version {version}")
    if not isinstance(manifest.get("members"), dict):
        raise ArtifactError(f"{path}: {MANIFEST} lists no members")
    return manifest
