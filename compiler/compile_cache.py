"""The compile cache: a compile asked again with the same inputs returns the artifact it wrote.

Key: the sha256 of everything a compile's result depends on (:func:`cache_key`):

- the ONNX file's bytes (and of the external-data files it names) and its file name (the
  manifest records it);
- the compile options, with a calibration file or folder and a tuning database by the sha256
  of their contents, and the target as resolved here (``host`` with this CPU's features);
- edgert's own source: every ``.py`` file of the installed ``edgert``, ``edgert.compiler``,
  ``edgert.ops`` and ``edgert.targets`` packages (:func:`source_digest`), so a changed line of
  the compiler never reuses an older build;
- the versions of the libraries the compile runs (TVM, TVM FFI, ONNX, onnxruntime, numpy,
  numba), Python's, and this machine's architecture and core count.

Calibration samples given from Python (an iterable of dicts, not a path) have no key: those
compiles always run.

Value: the finished ``.edgert`` file, byte for byte (its manifest's ``created`` time and its
``build.log`` are those of the compile that made it). Layout::

    <root>/<key>/.lock                  serializes compiles of the same key (built_once)
    <root>/<key>/artifact/model.edgert  written atomically, so its presence marks the entry done

``<root>`` is ``$EDGERT_COMPILE_CACHE`` if set, else ``compiled/`` in edgert's cache folder
(``$EDGERT_CACHE``, default ``~/.cache/edgert``). Entries are read back verified (every member's
sha256, :func:`edgert.artifact.read_artifact`); a damaged one is removed and compiled again.
After each store the least recently used entries go until the rest fit in :data:`MAX_BYTES`
(``$EDGERT_COMPILE_CACHE_BYTES`` overrides). ``EDGERT_NO_COMPILE_CACHE=1`` or
``compile_model(..., cache=False)`` (``edgert compile --no-cache``) bypasses the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from edgert.errors import ArtifactError
from edgert.fileio import atomic_path

DIR_ENV = "EDGERT_COMPILE_CACHE"
OFF_ENV = "EDGERT_NO_COMPILE_CACHE"
BYTES_ENV = "EDGERT_COMPILE_CACHE_BYTES"
MAX_BYTES = 2 << 30
"""Entries past this many bytes in all are evicted, least recently used first (2 GiB)."""
KEY_FORMAT = 1
"""Bump when the key's contents or the layout change."""
ARTIFACT = "model.edgert"
SOURCE_PACKAGES = ("edgert", "edgert.compiler", "edgert.ops", "edgert.targets")
LIBRARIES = ("apache-tvm", "apache-tvm-ffi", "onnx", "onnxruntime", "numpy", "numba")


@dataclass
class Stats:
    """What this process's compiles did with the cache (tests read it; nothing else does)."""

    hits: int = 0
    stores: int = 0
    damaged: int = 0


STATS = Stats()


def enabled(cache: bool | None) -> bool:
    """Whether a compile uses the cache: ``cache`` when given, else unless
    ``EDGERT_NO_COMPILE_CACHE`` is set (to anything but ``0`` or empty)."""
    if cache is not None:
        return cache
    return os.environ.get(OFF_ENV, "") in ("", "0")


def cache_root() -> Path:
    """``$EDGERT_COMPILE_CACHE``, else ``<edgert's cache folder>/compiled``."""
    env = os.environ.get(DIR_ENV)
    if env:
        return Path(env)
    from edgert.targets.qemu import cache_base

    return cache_base() / "compiled"


def max_bytes() -> int:
    """The size bound (``$EDGERT_COMPILE_CACHE_BYTES`` or :data:`MAX_BYTES`)."""
    try:
        return int(os.environ.get(BYTES_ENV, MAX_BYTES))
    except ValueError:
        return MAX_BYTES


@lru_cache(maxsize=1)
def source_digest() -> str:
    """sha256 over the relative path and bytes of every ``.py`` file of the installed edgert
    packages (:data:`SOURCE_PACKAGES`), in path order."""
    import importlib

    h = hashlib.sha256()
    for name in SOURCE_PACKAGES:
        for folder in importlib.import_module(name).__path__:
            root = Path(folder)
            for path in sorted(root.rglob("*.py")):
                h.update(f"{name}:{path.relative_to(root).as_posix()}\0".encode())
                h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def _library_versions() -> dict[str, str]:
    out = {}
    for dist in LIBRARIES:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _tree_digest(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, sorted)."""
    if path.is_file():
        return _file_digest(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path).as_posix()}\0{_file_digest(f)}\0".encode())
    return h.hexdigest()


def _model_digest(model_path: Path) -> str:
    """sha256 of the ONNX file and of the external-data files its tensors name."""
    raw = model_path.read_bytes()
    h = hashlib.sha256(raw)
    if b"location" in raw:              # maybe external data: name the files it uses
        import onnx
        from onnx.external_data_helper import uses_external_data

        model = onnx.load_model_from_string(raw)
        names = sorted({entry.value for t in _tensors(model.graph) if uses_external_data(t)
                        for entry in t.external_data if entry.key == "location"})
        for name in names:
            h.update(f"\0{name}\0{_file_digest(model_path.parent / name)}".encode())
    return h.hexdigest()


def _tensors(graph: Any) -> Iterator[Any]:
    """The TensorProtos of an ONNX graph: initializers and tensor attributes, subgraphs too."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _tensors(sub)


def cache_key(model_path: str | os.PathLike, ctx: Any) -> str | None:
    """The cache key of compiling ``model_path`` with ``ctx`` (a
    :class:`edgert.compiler.stages.Context`), or None when the compile cannot be cached
    (calibration samples given from Python, or a file it names cannot be read: the compile
    itself then reports that)."""
    from edgert.compiler.tune import target_db_dir

    opts = ctx.options
    if opts.calib is not None and not isinstance(opts.calib, (str, os.PathLike)):
        return None
    try:
        options = {f.name: getattr(opts, f.name) for f in fields(opts)}
        if opts.calib is not None:
            options["calib"] = _tree_digest(Path(opts.calib))
        if ctx.tuning_db is not None:
            options["tuning_db"] = [ctx.tuning_label,
                                    _tree_digest(target_db_dir(ctx.tuning_db, ctx.target))]
        model = Path(model_path)
        content = {
            "format": KEY_FORMAT,
            "model": [model.name, _model_digest(model)],
            "options": options,
            "target": [ctx.target.to_json(), ctx.target.tvm_target_dict(opts.threads)],
            "edgert": source_digest(),
            "libraries": _library_versions(),
            "python": sys.version,
            "machine": [platform.machine(), os.cpu_count()],
        }
    except (OSError, ValueError):
        return None
    text = json.dumps(content, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def lookup(key: str) -> Path | None:
    """The cached artifact of ``key``, verified, or None (absent; a damaged entry is removed)."""
    from edgert.artifact import read_artifact

    path = cache_root() / key / "artifact" / ARTIFACT
    if not path.is_file():
        return None
    try:
        read_artifact(path)
        os.utime(path)                           # recently used: evicted last
    except (ArtifactError, OSError):
        STATS.damaged += 1
        shutil.rmtree(path.parent.parent, ignore_errors=True)
        return None
    return path


def copy_out(cached: Path, output: str | os.PathLike) -> Path:
    """Copy a cached artifact to ``output`` atomically; returns ``output`` as a Path."""
    with atomic_path(output) as tmp:
        shutil.copyfile(cached, tmp)
    return Path(output)


def compiled(key: str, output: str | os.PathLike,
             compile_to: Callable[[Path], Path]) -> tuple[Path, bool]:
    """The artifact for ``key`` at ``output``: copied from the cache, or made by
    ``compile_to(path)`` into the cache first (under the entry's lock, so two processes
    compiling the same thing compile it once). Returns (``output``, whether the cache had it).

    When the cache folder cannot be written, compiles straight to ``output``.
    """
    from edgert.targets.qemu import built_once

    cached = lookup(key)
    if cached is not None:
        STATS.hits += 1
        return copy_out(cached, output), True
    folder = cache_root() / key / "artifact"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return compile_to(Path(output)), False
    stored: list[bool] = []

    def build() -> None:
        compile_to(folder / ARTIFACT)             # atomic: the marker appears last
        stored.append(True)

    try:
        built_once(folder, ARTIFACT, build, "the compile cache folder")
    except BaseException:
        if not (folder / ARTIFACT).is_file():     # nothing cached: leave no empty entry
            shutil.rmtree(folder.parent, ignore_errors=True)
        raise
    if stored:
        STATS.stores += 1
        evict(keep=key)
    else:                                         # another process compiled it meanwhile
        STATS.hits += 1
    return copy_out(folder / ARTIFACT, output), not stored


def evict(keep: str | None = None, limit: int | None = None) -> list[str]:
    """Remove the least recently used entries (not ``keep``) until the cache holds at most
    ``limit`` bytes (default :func:`max_bytes`); returns the removed keys. Safe beside other
    processes: a vanished entry is skipped, a half-made one (no artifact yet) is left alone."""
    limit = max_bytes() if limit is None else limit
    entries = []
    for path in cache_root().glob(f"*/artifact/{ARTIFACT}"):
        try:
            st = path.stat()
        except OSError:
            continue
        entries.append((st.st_mtime, st.st_size, path.parent.parent))
    total = sum(size for _, size, _ in entries)
    removed = []
    for _, size, entry in sorted(entries):
        if total <= limit:
            break
        if entry.name == keep:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        total -= size
        removed.append(entry.name)
    return removed
